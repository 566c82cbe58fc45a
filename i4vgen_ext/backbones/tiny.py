"""The embedded demo model: a tiny, randomly initialised (seeded) SD1.5-topology AnimateDiff stack, built by code
and cached, so that ``i4vgen generate`` and the tests run with no download. Its pictures look like noise: it
demonstrates the machinery, not the method's quality.

Details (cache folder and key): docs/backbones.md §Demo model.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from .clip_tokenizer import BYTE_LEVEL_VOCAB_SIZE, FULL_VOCAB_SIZE, find_open_clip_bpe, write_clip_tokenizer
from .configs import SD_MODEL_INDEX, TINY_MM, TINY_UNET, TINY_VAE, scheduler_config, tiny_text_config
from .ldm_convert import write_single_file_fixtures

__all__ = ["DEMO_NAME", "DEMO_VERSION", "ensure_demo_model", "build_demo_model", "is_demo_model",
           "read_demo_marker", "weights_digest", "write_single_file_fixtures", "demo_cache_key", "demo_folder_name"]

DEMO_VERSION = "demo-v1"
DEMO_NAME = "i4vgen tiny demo model (random weights, makes noise-like pictures)"
DEMO_SEED = 0
MARKER_FILE = "i4vgen_demo.json"
# Seeding uses torch's global generator: threads of one process build one at a time (processes are independent).
_BUILD_LOCK = threading.Lock()


def default_cache_root() -> Path:
    return Path(os.environ.get("I4VGEN_CACHE") or Path.home() / ".cache" / "i4vgen")


def read_demo_marker(model_dir: Path | str) -> Optional[dict]:
    try:
        marker = json.loads((Path(model_dir) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("demo") is True else None


def is_demo_model(model_dir: Path | str) -> bool:
    return read_demo_marker(model_dir) is not None


def demo_cache_key(seed: int = DEMO_SEED) -> Dict[str, Any]:
    """Everything that changes the demo model this environment builds: the version and seed, the tokenizer (the
    open_clip CLIP vocabulary when installed, else byte level: it sets the text encoder's vocabulary), the
    architecture configs, and the libraries whose code draws the random initial weights."""
    bpe = find_open_clip_bpe()
    vocab_size = FULL_VOCAB_SIZE if bpe is not None else BYTE_LEVEL_VOCAB_SIZE
    key = {
        "version": DEMO_VERSION,
        "seed": seed,
        "tokenizer": "clip-bpe" if bpe is not None else "byte-level",
        "vocab_size": vocab_size,
        "merges_sha256": hashlib.sha256(bpe.read_bytes()).hexdigest() if bpe is not None else None,
        "configs": {"unet": TINY_UNET, "vae": TINY_VAE, "motion_adapter": TINY_MM,
                    "text": tiny_text_config(vocab_size)},
        "libraries": {name: _version(name) for name in ("torch", "diffusers", "transformers")},
    }
    return json.loads(json.dumps(key, default=str))  # a plain JSON copy, as the marker file stores it


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package).split("+")[0]  # CPU and CUDA wheels initialise alike
    except importlib.metadata.PackageNotFoundError:
        return None


def _key_digest(key: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def demo_folder_name(key: Optional[Dict[str, Any]] = None) -> str:
    """``demo-v1-<tokenizer>-<12 hex digits of the key>``, e.g. ``demo-v1-clip-bpe-0123456789ab``."""
    key = key if key is not None else demo_cache_key()
    return f"{DEMO_VERSION}-{key['tokenizer']}-{_key_digest(key)[:12]}"


def ensure_demo_model(cache_dir: Path | str | None = None) -> Path:
    """The demo model folder for this environment (see ``demo_cache_key``), built on first use. ``cache_dir``
    defaults to ``$I4VGEN_CACHE`` or ~/.cache/i4vgen."""
    key = demo_cache_key()
    digest = _key_digest(key)

    def is_complete(folder: Path) -> bool:
        marker = read_demo_marker(folder)
        return marker is not None and marker.get("cache_key_sha256") == digest

    return build_once(cache_dir, demo_folder_name(key), lambda folder: build_demo_model(folder), is_complete)


def build_once(cache_dir: Path | str | None, version: str, build: Callable[[Path], object],
               is_complete: Callable[[Path], bool]) -> Path:
    """``cache_dir/version``, built by ``build(folder)`` the first time: into a temporary folder beside it, renamed
    into place, so concurrent processes never see half a model and the first one to finish wins. A folder there
    that is not complete (an interrupted copy, files deleted by hand) is replaced by a fresh build the same way."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / version
    if is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-building-", dir=root))
    try:
        build(staging)
        _move_into_place(staging, final, is_complete)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _move_into_place(staging: Path, final: Path, is_complete: Callable[[Path], bool]) -> None:
    error: Optional[OSError] = None
    for _ in range(5):
        try:
            os.rename(staging, final)
            return
        except OSError as err:
            error = err
            if is_complete(final):  # a concurrent build won: ours is discarded
                return
            if not os.path.lexists(final):  # moved away meanwhile: try again
                continue
        # An incomplete leftover: move it aside in one rename (another process may be doing the same), delete it.
        stale = Path(tempfile.mkdtemp(prefix=f".{final.name}-stale-", dir=final.parent))
        try:
            os.rename(final, stale / final.name)
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(stale, ignore_errors=True)
    raise OSError(f"could not move the new build into {final}: {error}")


def build_demo_model(directory: Path | str, *, seed: int = DEMO_SEED) -> Path:
    """Build and save the demo model into ``directory`` (deterministic for a given seed and vocabulary)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(directory / "tokenizer")), local_files_only=True)
    vocab_size = len(tokenizer)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab_size)))
        torch.manual_seed(seed + 3)
        adapter = MotionAdapter(**TINY_MM)
    unet.save_pretrained(directory / "unet")
    vae.save_pretrained(directory / "vae")
    text_encoder.save_pretrained(directory / "text_encoder")
    adapter.save_pretrained(directory / "motion_adapter")
    scheduler_dir = directory / "scheduler"
    scheduler_dir.mkdir(exist_ok=True)
    (scheduler_dir / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=2), encoding="utf-8")
    (directory / "model_index.json").write_text(json.dumps(SD_MODEL_INDEX, indent=2), encoding="utf-8")
    key = demo_cache_key(seed)
    if key["vocab_size"] != vocab_size:  # the merge list came or went between the two looks
        raise RuntimeError(f"the demo tokenizer has {vocab_size} tokens, its cache key says {key['vocab_size']}")
    marker = {
        "demo": True,
        "name": DEMO_NAME,
        "version": DEMO_VERSION,
        "seed": seed,
        "tokenizer": "byte-level CLIP" if vocab_size == BYTE_LEVEL_VOCAB_SIZE else "CLIP BPE (open_clip vocabulary)",
        "vocab_size": vocab_size,
        "cache_key": key,
        "cache_key_sha256": _key_digest(key),
        "layout": "diffusers SD1.5 folder + motion_adapter/ (AnimateDiff v2-style, mid block)",
        "weights_sha256": weights_digest(directory),
    }
    # Written last: its presence is what marks the folder complete.
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    return directory


def weights_digest(model_dir: Path | str) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) of every .safetensors file under ``model_dir``."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*.safetensors")):
        tensors = load_file(str(path))
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{path.relative_to(model_dir).as_posix()}:{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

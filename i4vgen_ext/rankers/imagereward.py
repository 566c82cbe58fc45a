"""The ``imagereward`` ranker: finds ImageReward v1.0's files, loads them strictly, scores candidates in batches.

Files: ``ImageReward.pt`` (state dict), ``med_config.json`` (text tower sizes; the released values are built in) and
the ``bert-base-uncased`` tokenizer. transformers is imported only to build that tokenizer."""
from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from ..errors import RankerLoadError
from .base import DeviceSession, DTypeLike, ModelRanker, describe_device, is_out_of_memory, resolve_dtype
from .imagereward_model import DEFAULT_MED_CONFIG, PROMPT_TOKENS, ImageRewardModel, build_model, preprocess_batch
from .locate import PathLike, has_files, hf_cache_dir, hub_folder, is_offline, webui_models_dir
from .prompt import clean_prompt

log = logging.getLogger("i4vgen.rankers")

NAME = "imagereward"
REPO_ID = "THUDM/ImageReward"
WEIGHTS = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER_ID = "bert-base-uncased"  # the id BLIP hard-codes; the WebUI's BLIP interrogator caches the same one
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
HINT = (
    f"download {WEIGHTS} (1.8 GB) and {MED_CONFIG} from https://huggingface.co/{REPO_ID} into "
    "<WebUI>/models/ImageReward/ or ~/.cache/ImageReward/ (or give their folder as the ranker path: a path in the CLI, "
    "the name of a folder inside models/ImageReward/ in the WebUI), and have the "
    f"{TOKENIZER_ID} tokenizer in the Hugging Face cache or in a tokenizer/ folder beside the weights; running once "
    "online downloads all of them"
)


@dataclass
class ImageRewardFiles:
    weights: Path
    med_config: Optional[Path]  # None: the released med_config values
    tokenizer: Path  # a folder with vocab.txt or tokenizer.json
    searched: List[str] = field(default_factory=list)


def locate_weights(
    path: Optional[PathLike] = None, *, webui_models: Optional[PathLike] = None, offline: bool = False
) -> tuple[Path, List[str]]:
    """The checkpoint file and every place looked at, in this order: the explicit path (a folder holding
    ``ImageReward.pt``, or the checkpoint file itself; nothing else is searched then), ``<WebUI models>/ImageReward/``,
    ``~/.cache/ImageReward/`` (where image-reward downloads), the HF cache, a hub download (online only).
    Raises RankerLoadError when no place has it."""
    offline = is_offline(offline)
    if path not in (None, ""):
        given = Path(path).expanduser()
        weights = given if given.is_file() else given / WEIGHTS
        if weights.is_file():
            return weights, [str(given)]
        raise RankerLoadError(NAME, f"{WEIGHTS} not found in the ranker path", [str(given)], HINT)

    searched: List[str] = []
    local = []
    models = webui_models_dir(webui_models)
    if models is not None:
        local.append(models / "ImageReward")
    local.append(Path.home() / ".cache" / "ImageReward")
    for folder in local:
        searched.append(str(folder))
        if (folder / WEIGHTS).is_file():
            return folder / WEIGHTS, searched

    folder, where = hub_folder(REPO_ID, [WEIGHTS], offline=True)
    searched.append(where)
    if folder is not None:
        return folder / WEIGHTS, searched
    # THUDM's own WebUI script on Windows downloads with local_dir=<hub cache>: the files lie flat there.
    flat = hf_cache_dir()
    searched.append(str(flat))
    if (flat / WEIGHTS).is_file():
        return flat / WEIGHTS, searched
    if not offline:
        folder, where = hub_folder(REPO_ID, [WEIGHTS, MED_CONFIG], offline=False)
        searched.append(f"hub download: {where}")
        if folder is not None:
            return folder / WEIGHTS, searched
    reason = "weights not found" + (" offline" if offline else "")
    raise RankerLoadError(NAME, reason, searched, HINT)


def locate_tokenizer(weights_folder: Path, *, offline: bool = False, explicit: bool = False) -> tuple[Path, List[str]]:
    """A ``tokenizer/`` folder beside the weights, else ``bert-base-uncased`` from the HF cache (or the hub).

    ``explicit``: the weights came from an explicit ranker path, which is never completed from the hub: only the
    HF cache on disk is looked at (no download, no network)."""
    beside = weights_folder / "tokenizer"
    searched = [str(beside)]
    if has_files(beside, [TOKENIZER_FILES]):
        return beside, searched
    folder, where = hub_folder(TOKENIZER_ID, ["vocab.txt"], optional=["tokenizer_config.json"],
                               offline=explicit or is_offline(offline))
    searched.append(where)
    if folder is None:
        detail = (f"an explicit ranker path is never completed from the hub: put a tokenizer/ folder ({TOKENIZER_ID}"
                  f"'s vocab.txt) beside {WEIGHTS}, or have {TOKENIZER_ID} in the Hugging Face cache") if explicit else ""
        raise RankerLoadError(NAME, "tokenizer not found" + (" offline" if is_offline(offline) else ""), searched, HINT,
                              detail)
    return folder, searched


def locate_imagereward(
    path: Optional[PathLike] = None, *, webui_models: Optional[PathLike] = None, offline: bool = False
) -> ImageRewardFiles:
    weights, searched = locate_weights(path, webui_models=webui_models, offline=offline)
    tokenizer, more = locate_tokenizer(weights.parent, offline=offline, explicit=path not in (None, ""))
    med_config = weights.parent / MED_CONFIG
    return ImageRewardFiles(weights, med_config if med_config.is_file() else None, tokenizer, searched + more)


def read_med_config(path: Optional[Path], searched: Sequence[str]) -> Dict[str, Any]:
    if path is None:
        log.info("no %s beside the weights: using the values released with ImageReward v1.0", MED_CONFIG)
        return dict(DEFAULT_MED_CONFIG)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RankerLoadError(NAME, f"unreadable {MED_CONFIG}", searched, HINT, f"{path}: {error}") from error
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "max_position_embeddings", "vocab_size") if k not in config]
    if missing:
        raise RankerLoadError(NAME, f"{MED_CONFIG} lacks {', '.join(missing)}", searched, HINT, str(path))
    return config


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([A-Za-z_][\w.]*) ")


def read_checkpoint(path: Path, searched: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors only, no code from the file runs. Never retried unsafely.

    A file that fails is reported as corrupt or truncated, unless it is an intact zip checkpoint that stores a Python
    object (then it is refused as holding more than tensors). torch's own text is not repeated: it suggests
    ``weights_only=False``, which would run code from the file."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        if is_out_of_memory(error):
            raise RankerLoadError(NAME, "out of memory", searched, HINT, f"reading {path}: {error}") from error
        stored = _stored_object(path, error)
        if stored is not None:
            raise RankerLoadError(
                NAME, "checkpoint holds more than tensors", searched, HINT,
                f"{path} stores a Python object ({stored}), not only tensors; it is refused, never unpickled. "
                f"Use the released {WEIGHTS}.",
            ) from None  # torch's text advises weights_only=False: not shown, not even as the cause
        raise RankerLoadError(
            NAME, "corrupt or truncated checkpoint", searched, HINT + " (download the file again)",
            f"{path} is corrupt or truncated: it is not a complete checkpoint of tensors ({_cause(error)}); "
            f"download {WEIGHTS} again",
        ) from (None if isinstance(error, pickle.UnpicklingError) else error)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RankerLoadError(NAME, "checkpoint is not a state dict of tensors", searched, HINT, str(path))
    return state


def _stored_object(path: Path, error: Exception) -> Optional[str]:
    """The disallowed global an intact zip checkpoint names, or None (any other failure: the file is damaged).
    A damaged file can also name a global (a cut-off one, such as ``torch._utils._rebuild_tens``), so the archive's
    CRCs are checked first."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    match = _GLOBAL.search(str(error))
    if match is None:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                return None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return None
    return match.group(1)


def _cause(error: Exception) -> str:
    """A short, safe description of why torch could not read the file (no advice about unsafe loading)."""
    if isinstance(error, pickle.UnpicklingError):
        return "unreadable pickle data"
    first = str(error).split(". ")[0].splitlines()[0].strip() if str(error).strip() else ""
    if "weights_only" in first or len(first) > 160:
        first = ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_tokenizer(folder: Path, vocab_size: int, searched: Sequence[str]):
    """BLIP's tokenizer: bert-base-uncased plus ``[DEC]`` (bos) and ``[ENC]``, as the original's init_tokenizer."""
    try:
        from transformers import BertTokenizer, BertTokenizerFast
    except ImportError as error:
        raise RankerLoadError(NAME, "transformers is not installed", searched, "pip install transformers") from error
    cls = BertTokenizer if (folder / "vocab.txt").is_file() else BertTokenizerFast
    try:
        tokenizer = cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise RankerLoadError(NAME, "unreadable tokenizer", searched, HINT, f"{folder}: {error}") from error
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) != vocab_size:
        raise RankerLoadError(
            NAME, "tokenizer does not match the checkpoint", searched, HINT,
            f"{folder} gives {len(tokenizer)} tokens with [DEC] and [ENC]; the text tower embeds {vocab_size}",
        )
    return tokenizer


class ImageRewardRanker(ModelRanker):
    """Scores N candidates for one prompt in batches under ``no_grad``; the model visits ``device`` only while scoring."""

    name = NAME

    def __init__(self, model: ImageRewardModel, tokenizer, device: torch.device, files: ImageRewardFiles,
                 batch_size: int = 16):
        super().__init__(model, device, batch_size)
        self.model: Optional[ImageRewardModel]
        self.tokenizer, self.files = tokenizer, files

    def inputs(self, prompt: str, images: Sequence[Image.Image]) -> Tuple[torch.Tensor, Any]:
        tokens = self.tokenizer(clean_prompt(prompt), padding="max_length", truncation=True,
                                max_length=PROMPT_TOKENS, return_tensors="pt")
        return preprocess_batch(images, self.model.config.image_size), tokens

    @torch.no_grad()
    def _score_on(self, device: torch.device, pixels: torch.Tensor, tokens) -> List[float]:
        model = self.model
        dtype = model.blip.visual_encoder.cls_token.dtype
        with DeviceSession(model, device):
            ids = tokens["input_ids"].to(device)
            mask = tokens["attention_mask"].to(device)
            rewards = [model(chunk.to(device, dtype), ids, mask).float().cpu()
                       for chunk in pixels.split(self.batch_size)]
        return [float(r) for r in torch.cat(rewards)]


def load_imagereward(
    path: Optional[PathLike] = None,
    *,
    device: Any = "cpu",
    dtype: DTypeLike = None,
    offline: bool = False,
    webui_models_dir: Optional[PathLike] = None,
) -> ImageRewardRanker:
    """Find the files (see ``locate_weights``), read them strictly and build the ranker on the CPU."""
    files = locate_imagereward(path, webui_models=webui_models_dir, offline=offline)
    med_config = read_med_config(files.med_config, files.searched)
    state = read_checkpoint(files.weights, files.searched)
    try:
        model = build_model(state, med_config, resolve_dtype(dtype))
    except KeyError as error:
        raise RankerLoadError(NAME, "checkpoint does not match ImageReward v1.0", files.searched, HINT,
                              f"{files.weights}: missing key {error}") from error
    except ValueError as error:
        raise RankerLoadError(NAME, "checkpoint does not match ImageReward v1.0", files.searched, HINT,
                              f"{files.weights}: {error}") from error
    except Exception as error:
        if is_out_of_memory(error):
            raise RankerLoadError(NAME, "out of memory", files.searched, HINT, str(error)) from error
        raise
    tokenizer = load_tokenizer(files.tokenizer, model.config.vocab_size, files.searched)
    log.info("imagereward loaded from %s (tokenizer %s)", files.weights, files.tokenizer)
    return ImageRewardRanker(model, tokenizer, describe_device(device), files)

"""Resolve what the user named (a folder, a single file, nothing) into the components of an AnimateDiff model,
offline, with the image UNet and the motion UNet sharing one set of spatial weights.

Details (accepted inputs): docs/backbones.md §Loading.
"""
from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import MissingDependencyError, ModelFileError, UnsupportedCheckpointError
from . import configs
from .checkpoint_io import check_checkpoint, is_single_file, read_checkpoint
from .shared_unets import image_unet_view, motion_unet_from_parts, share_motion_modules
from .tiny import DEMO_NAME, ensure_demo_model, read_demo_marker

MOTION_MODULE_HINT = (
    "pass a motion module with --motion-module (an AnimateDiff mm_*.ckpt / .safetensors file, e.g. "
    "mm_sd_v15_v2.ckpt, or a diffusers MotionAdapter folder)"
)
STANDALONE_PACKAGES = ("diffusers", "transformers")
_SD_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


@dataclass
class ModelParts:
    unet: Any  # UNetMotionModel
    image_unet: Any  # UNet2DConditionModel sharing unet's spatial modules
    vae: Any
    text_encoder: Any
    tokenizer: Any
    description: Dict[str, Any] = field(default_factory=dict)


def load_model_parts(
    model: Optional[str | Path],
    motion_module: Optional[str | Path] = None,
    *,
    dtype: torch.dtype = torch.float32,
    single_file_config: Optional[str | Path] = None,
    trust_pickle: bool = False,
) -> ModelParts:
    require_standalone()
    preflight(model, motion_module, trust_pickle=trust_pickle)
    if model is None:
        folder = ensure_demo_model()
        parts = _load_folder(folder, motion_module, dtype=dtype, trust_pickle=trust_pickle)
        marker = read_demo_marker(folder) or {}
        parts.description = {"name": DEMO_NAME, "demo": True, "kind": "demo", "path": str(folder),
                             "version": marker.get("version"), "tokenizer": marker.get("tokenizer"),
                             "weights_sha256": marker.get("weights_sha256"), **_motion_entry(parts.description)}
        return parts
    path = Path(model).expanduser()
    if path.is_dir():
        parts = _load_folder(path, motion_module, dtype=dtype, trust_pickle=trust_pickle)
        marker = read_demo_marker(path)
        if marker is not None:
            parts.description.update(name=DEMO_NAME, demo=True)
        return parts
    if is_single_file(path):
        return _load_single_file(path, motion_module, dtype=dtype, config=single_file_config, trust_pickle=trust_pickle)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    raise ValueError(f"{path} is neither a diffusers model folder nor a .safetensors/.ckpt checkpoint")


def require_standalone() -> None:
    """Raise ``MissingDependencyError`` (one line: what to install) when diffusers or transformers is missing."""
    for name in STANDALONE_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MissingDependencyError(
                f"the standalone (diffusers) backbone needs {name}, which is not installed ({err}); install it with: "
                f'pip install "i4vgen[standalone]"', name=name) from None


def preflight(model, motion_module, *, trust_pickle: bool = False) -> None:
    """The cheap checks of the single files named, before any model work: readable, and each in its role
    (an SD checkpoint given as the motion module, or a motion module given as the model, is named as such)."""
    if model is not None and is_single_file(Path(model).expanduser()):
        path = Path(model).expanduser()
        keys = check_checkpoint(path, trust_pickle=trust_pickle, what="model")
        if keys is not None and _looks_like_motion_module(keys):
            raise ModelFileError(f"model {path} is an AnimateDiff motion module, not a Stable Diffusion checkpoint; "
                                 f"pass it with --motion-module and an SD1.5 checkpoint or folder with --model")
    if motion_module is not None and is_single_file(Path(motion_module).expanduser()):
        path = Path(motion_module).expanduser()
        keys = check_checkpoint(path, trust_pickle=trust_pickle, what="motion module")
        if keys is not None:
            _check_motion_keys(path, keys)


def _looks_like_motion_module(keys) -> bool:
    return any(".motion_modules." in k for k in keys) and not any(k.startswith(_SD_PREFIXES) for k in keys)


def _check_motion_keys(path: Path, keys) -> None:
    keys = list(keys)
    if any(k.startswith(_SD_PREFIXES) for k in keys) and not any("motion_modules" in k for k in keys):
        raise ModelFileError(
            f"motion module {path} is a Stable Diffusion checkpoint, not an AnimateDiff motion module; pass it with "
            f"--model, and {MOTION_MODULE_HINT}")


def _motion_entry(description: Dict[str, Any]) -> Dict[str, Any]:
    return {k: description[k] for k in ("motion_module", "motion_module_version") if k in description}


def _class_name(config_file: Path) -> Optional[str]:
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError):
        return None


def _variant(folder: Path) -> Optional[str]:
    """``"fp16"`` when a component folder only holds fp16-variant weights (as many hub snapshots do)."""
    names = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if n.count(".") == 1]
    return "fp16" if not plain and any(".fp16." in n for n in names) else None


def _load_folder(folder: Path, motion_module, *, dtype: torch.dtype, trust_pickle: bool) -> ModelParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet_class = _class_name(folder / "unet" / "config.json")
    if unet_class is None:
        raise ValueError(f"{folder} is not a diffusers model folder (no unet/config.json)")
    common = dict(torch_dtype=dtype, local_files_only=True)
    description: Dict[str, Any] = {"path": str(folder)}
    if unet_class == "UNetMotionModel":
        unet = UNetMotionModel.from_pretrained(folder, subfolder="unet", variant=_variant(folder / "unet"), **common)
        description["kind"] = "animatediff-folder"
        if motion_module is not None:
            adapter, entry = load_motion_adapter(motion_module, dtype=dtype, trust_pickle=trust_pickle)
            share_motion_modules(adapter, unet)
            description.update(entry)
        image_unet = image_unet_view(unet)
    elif unet_class == "UNet2DConditionModel":
        source = motion_module if motion_module is not None else folder / "motion_adapter"
        if motion_module is None and not (folder / "motion_adapter" / "config.json").is_file():
            raise ValueError(f"{folder} is a Stable Diffusion model without motion modules; {MOTION_MODULE_HINT}")
        adapter, entry = load_motion_adapter(source, dtype=dtype, trust_pickle=trust_pickle)
        image_unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", variant=_variant(folder / "unet"), **common)
        unet = motion_unet_from_parts(image_unet, adapter)
        description.update(kind="sd-folder", **entry)
    else:
        raise ValueError(
            f"{folder}/unet holds a {unet_class}; an SD1.5 UNet2DConditionModel or UNetMotionModel is needed")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **common)
    text_encoder = CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", variant=_variant(folder / "text_encoder"), dtype=dtype, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    return ModelParts(unet, image_unet, vae, text_encoder, tokenizer, description)


def load_motion_adapter(source: str | Path, *, dtype: torch.dtype = torch.float32, trust_pickle: bool = False):
    """A MotionAdapter from a diffusers folder or an AnimateDiff single file; returns (adapter, description)."""
    from diffusers import MotionAdapter

    path = Path(source).expanduser()
    if path.is_dir():
        if _class_name(path / "config.json") != "MotionAdapter":
            raise ValueError(f"{path} is not a diffusers MotionAdapter folder (no config.json naming MotionAdapter)")
        adapter = MotionAdapter.from_pretrained(path, torch_dtype=dtype, local_files_only=True, variant=_variant(path))
        return adapter, _adapter_entry(path, adapter.config)
    if not path.is_file():
        raise FileNotFoundError(f"motion module not found: {path}")
    if not is_single_file(path):
        raise ValueError(f"{path.name}: a motion module must be a .ckpt/.safetensors file or a MotionAdapter folder")
    state_dict = read_checkpoint(path, trust_pickle=trust_pickle, what="motion module")
    _check_motion_keys(path, state_dict)
    try:
        config = configs.motion_adapter_config(state_dict)
    except UnsupportedCheckpointError as err:
        raise ModelFileError(f"motion module {path}: {err}; {MOTION_MODULE_HINT}") from None
    with tempfile.TemporaryDirectory(prefix="i4vgen-mm-config-") as config_dir:
        configs.write_motion_adapter_config_dir(config_dir, config)
        adapter = MotionAdapter.from_single_file(
            state_dict, config=config_dir, torch_dtype=dtype, local_files_only=True)
    return adapter, _adapter_entry(path, config)


def _adapter_entry(path: Path, config) -> Dict[str, Any]:
    return {"motion_module": str(path), "motion_module_version": configs.motion_module_version(config)}


def _load_single_file(path: Path, motion_module, *, dtype: torch.dtype, config, trust_pickle: bool) -> ModelParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    if motion_module is None:
        raise ValueError(
            f"{path.name} is a single-file Stable Diffusion checkpoint without motion modules; {MOTION_MODULE_HINT}")
    state_dict = configs.rename_old_clip_layout(read_checkpoint(path, trust_pickle=trust_pickle, what="model"))
    with tempfile.TemporaryDirectory(prefix="i4vgen-sd-config-") as written:
        if config is None:
            try:
                family = configs.sd_family(state_dict)
                config_dir = str(configs.write_config_dir_for_checkpoint(written, state_dict))
            except UnsupportedCheckpointError as err:
                raise UnsupportedCheckpointError(f"model {path}: {err}") from None
        else:
            family, config_dir = "custom", str(config)
        common = dict(config=config_dir, torch_dtype=dtype, local_files_only=True)
        unet = UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(state_dict, subfolder="vae", **common)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state_dict, subfolder="text_encoder", config=config_dir, torch_dtype=dtype,
            local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
    del state_dict
    adapter, entry = load_motion_adapter(motion_module, dtype=dtype, trust_pickle=trust_pickle)
    motion_unet = motion_unet_from_parts(unet, adapter)
    description = {"kind": "single-file", "path": str(path), "architecture": family, **entry}
    return ModelParts(motion_unet, unet, vae, text_encoder, tokenizer, description)

"""Architecture configs written by code, so that single-file checkpoints (A1111 SD1.5, AnimateDiff ``mm_*.ckpt``)
load with no hub access: the real SD1.5 / AnimateDiff layouts and the tiny demo model's, told apart by tensor shapes.

Details: docs/backbones.md §Configs.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from ..core.schedule import ScheduleConfig
from ..errors import UnsupportedCheckpointError
from .clip_tokenizer import FULL_VOCAB_SIZE, write_clip_tokenizer

SD15_UNET: Dict[str, Any] = dict(
    sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE: Dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, scaling_factor=0.18215,
)
SD15_TEXT: Dict[str, Any] = dict(
    vocab_size=FULL_VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
MM_V2: Dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_num_attention_heads=8,
    motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
MM_V1: Dict[str, Any] = {**MM_V2, "motion_max_seq_length": 24, "use_motion_mid_block": False}
MM_V3: Dict[str, Any] = {**MM_V2, "use_motion_mid_block": False}

# The embedded demo model ("TINY_SD"): SD1.5's topology and checkpoint key layout at tiny widths.
TINY_UNET: Dict[str, Any] = {
    **SD15_UNET, "sample_size": 8, "block_out_channels": (32, 32, 64, 64), "cross_attention_dim": 32,
    "attention_head_dim": 2, "norm_num_groups": 8,
}
TINY_VAE: Dict[str, Any] = {**SD15_VAE, "block_out_channels": (8, 16, 16, 16), "sample_size": 64, "norm_num_groups": 4}
TINY_TEXT: Dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
)
TINY_MM: Dict[str, Any] = {
    **MM_V2, "block_out_channels": (32, 32, 64, 64), "motion_num_attention_heads": 2, "motion_norm_num_groups": 8,
}

FAMILIES = {
    "sd15": {"unet": SD15_UNET, "vae": SD15_VAE, "text": SD15_TEXT},
    "i4vgen-tiny": {"unet": TINY_UNET, "vae": TINY_VAE, "text": TINY_TEXT},
}

SD_MODEL_INDEX: Dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_TOKEN_EMBEDDING = CLIP_PREFIX + "text_model.embeddings.token_embedding.weight"


def tiny_text_config(vocab_size: int) -> Dict[str, Any]:
    return {**TINY_TEXT, "vocab_size": vocab_size, "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}


def scheduler_config(schedule: ScheduleConfig = ScheduleConfig()) -> Dict[str, Any]:
    return {"_class_name": "DDIMScheduler", **schedule.to_dict(), "prediction_type": "epsilon"}


def _full_config(model_class, partial: Mapping[str, Any]) -> Dict[str, Any]:
    """Every ``__init__`` argument with its default, then ``partial``: what diffusers' ``register_to_config``
    records, which the single-file converters read (e.g. ``layers_per_block``). Nothing is built."""
    parameters = inspect.signature(model_class.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters
                if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty}
    unknown = set(partial) - set(defaults)
    if unknown:
        raise ValueError(f"{model_class.__name__} has no config option(s) {sorted(unknown)}")
    return {**defaults, **partial}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=list), encoding="utf-8")


def write_sd_config_dir(
    directory: Path | str,
    *,
    unet: Mapping[str, Any],
    vae: Mapping[str, Any],
    text: Mapping[str, Any],
    schedule: ScheduleConfig = ScheduleConfig(),
) -> Path:
    """A config-only StableDiffusionPipeline folder (model_index, unet/vae/text_encoder configs, tokenizer,
    scheduler) that ``from_single_file(..., config=directory, local_files_only=True)`` accepts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    directory = Path(directory)
    _write_json(directory / "unet" / "config.json", {"_class_name": "UNet2DConditionModel",
                                                    **_full_config(UNet2DConditionModel, unet)})
    _write_json(directory / "vae" / "config.json", {"_class_name": "AutoencoderKL", **_full_config(AutoencoderKL, vae)})
    CLIPTextConfig(**text).save_pretrained(directory / "text_encoder")
    write_clip_tokenizer(directory / "tokenizer", vocab_size=int(text["vocab_size"]))
    _write_json(directory / "scheduler" / "scheduler_config.json", scheduler_config(schedule))
    _write_json(directory / "model_index.json", SD_MODEL_INDEX)
    return directory


def write_motion_adapter_config_dir(directory: Path | str, config: Mapping[str, Any]) -> Path:
    from diffusers import MotionAdapter

    directory = Path(directory)
    _write_json(directory / "config.json", {"_class_name": "MotionAdapter", **_full_config(MotionAdapter, config)})
    return directory


def rename_old_clip_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Some merged SD1.x files store the text encoder without the ``text_model.`` level
    (``cond_stage_model.transformer.embeddings.*``); diffusers then reports the text encoder as missing."""
    if CLIP_TOKEN_EMBEDDING in state_dict or CLIP_PREFIX + "embeddings.token_embedding.weight" not in state_dict:
        return state_dict
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(CLIP_PREFIX) and not key.startswith(CLIP_PREFIX + "text_model."):
            key = CLIP_PREFIX + "text_model." + key[len(CLIP_PREFIX):]
        renamed[key] = value
    return renamed


def sd_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"sd15"`` or ``"i4vgen-tiny"`` for an A1111-layout checkpoint; a clear error for anything else."""
    if any(k.startswith("conditioner.") for k in state_dict):
        raise UnsupportedCheckpointError(
            "this is an SDXL-style checkpoint; AnimateDiff here needs an SD1.5-family model")
    if any(k.startswith("cond_stage_model.model.") for k in state_dict):
        raise UnsupportedCheckpointError(
            "this is an SD2.x checkpoint (OpenCLIP text encoder); only SD1.5-family models work")
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise UnsupportedCheckpointError(
            "no UNet weights (model.diffusion_model.*) found: not an A1111/LDM SD checkpoint")
    if conv_in.shape[1] != 4:
        raise UnsupportedCheckpointError(
            f"the UNet takes {conv_in.shape[1]} input channels (an inpainting/instruct model?); "
            "only 4-channel SD1.5 works")
    if CLIP_TOKEN_EMBEDDING not in state_dict:
        raise UnsupportedCheckpointError(
            "no CLIP text encoder weights (cond_stage_model.transformer.*) in the checkpoint")
    for family, parts in FAMILIES.items():
        if conv_in.shape[0] == parts["unet"]["block_out_channels"][0]:
            return family
    raise UnsupportedCheckpointError(
        f"unknown UNet width {conv_in.shape[0]}; pass single_file_config=<diffusers folder with matching configs>")


def write_config_dir_for_checkpoint(
    directory: Path | str, state_dict: Mapping[str, torch.Tensor], schedule: ScheduleConfig = ScheduleConfig()
) -> Path:
    family = FAMILIES[sd_family(state_dict)]
    vocab_size = int(state_dict[CLIP_TOKEN_EMBEDDING].shape[0])
    text = dict(family["text"]) if "vocab_size" in family["text"] else tiny_text_config(vocab_size)
    if text["vocab_size"] != vocab_size:
        raise UnsupportedCheckpointError(
            f"text encoder vocabulary of {vocab_size} tokens, expected {text['vocab_size']}")
    return write_sd_config_dir(directory, unet=family["unet"], vae=family["vae"], text=text, schedule=schedule)


def motion_adapter_config(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The MotionAdapter config of an AnimateDiff motion-module state dict (original or diffusers key layout):
    v1 (24 positions), v2 (mid block), v3 (32 positions, no mid block), or the tiny demo family."""
    first = next((k for k in state_dict
                  if k.startswith("down_blocks.0.motion_modules.0.") and k.endswith("proj_in.weight")), None)
    if first is None:
        raise UnsupportedCheckpointError("no AnimateDiff motion modules (down_blocks.0.motion_modules.0.*) in the file")
    width = state_dict[first].shape[1]
    levels = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")})
    has_mid = any(k.startswith("mid_block.") for k in state_dict)
    positions = next((v.shape[1] for k, v in state_dict.items() if k.endswith("pos_encoder.pe")), None)
    if width == MM_V2["block_out_channels"][0]:
        if len(levels) != 4:
            raise UnsupportedCheckpointError(f"motion modules for {len(levels)} UNet levels (SDXL?); SD1.5 has 4")
        if has_mid:
            config = dict(MM_V2)
        else:
            config = dict(MM_V1 if positions == 24 else MM_V3)
    elif width == TINY_MM["block_out_channels"][0]:
        config = {**TINY_MM, "use_motion_mid_block": has_mid}
    else:
        raise UnsupportedCheckpointError(f"unknown motion-module width {width}; SD1.5 AnimateDiff modules start at 320")
    if positions is not None:
        config["motion_max_seq_length"] = int(positions)
    return config


def motion_module_version(config: Mapping[str, Any]) -> str:
    if config["use_motion_mid_block"]:
        return "v2"
    return "v1" if config["motion_max_seq_length"] == 24 else "v3"

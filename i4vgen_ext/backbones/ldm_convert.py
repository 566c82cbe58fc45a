"""diffusers -> original (LDM / A1111 / AnimateDiff) key layouts: the reverse of diffusers' single-file converters.

Used to make single-file fixtures from a diffusers folder (an A1111-style ``.safetensors`` checkpoint and an
AnimateDiff ``mm_*.ckpt``) and to match LoRA layer names written in the LDM layout. Works for any SD1.5-topology
UNet whatever its widths or layers per block, and for SDXL's (three levels, the pooled-text/size ``label_emb``).
Pure tensor work: no diffusers import.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

import torch

from .configs import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

_RESNET_NAMES = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# UNet layers outside the blocks; add_embedding is SDXL's pooled-text/size embedding
_RENAMED_PREFIXES = {
    "conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
}


def _swap_prefix(key: str, old: str, new: str) -> str:
    return new + key[len(old):]


def _resnet_key(rest: str) -> str:
    layer, _, tail = rest.partition(".")
    return f"{_RESNET_NAMES.get(layer, layer)}.{tail}"


def unet_key_to_ldm(key: str, config: Mapping) -> str:
    """One diffusers UNet2DConditionModel key (no prefix) in the LDM ``model.diffusion_model`` layout (no prefix)."""
    per_level = int(config["layers_per_block"]) + 1
    parts = key.split(".")
    for old, new in _RENAMED_PREFIXES.items():
        if key.startswith(old):
            return _swap_prefix(key, old, new)
    if parts[0] == "down_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{1 + level * per_level + j}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"input_blocks.{1 + level * per_level + j}.1.{rest}"
        if kind == "downsamplers":
            return f"input_blocks.{level * per_level + per_level}.0.op.{rest.removeprefix('conv.')}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{level * per_level + j}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"output_blocks.{level * per_level + j}.1.{rest}"
        if kind == "upsamplers":
            slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
            return f"output_blocks.{level * per_level + per_level - 1}.{slot}.{rest}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> Dict[str, torch.Tensor]:
    return {UNET_PREFIX + unet_key_to_ldm(k, config): v for k, v in state_dict.items()}


def vae_key_to_ldm(key: str, levels: int) -> str:
    parts = key.split(".")
    side, rest = parts[0], parts[1:]
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    if rest[0] in ("down_blocks", "up_blocks"):
        level = int(rest[1]) if side == "encoder" else levels - 1 - int(rest[1])
        group = "down" if side == "encoder" else "up"
        if rest[2] == "resnets":
            inner = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{group}.{level}.block.{rest[3]}.{inner}"
        sampler = "downsample" if side == "encoder" else "upsample"
        return f"{side}.{group}.{level}.{sampler}.{'.'.join(rest[4:])}"  # rest[3] is the sampler index 0
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            inner = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(rest[2]) + 1}.{inner}"
        inner = ".".join(rest[3:])
        for old, new in _VAE_ATTENTION_NAMES.items():
            if inner.startswith(old + "."):
                inner = new + inner[len(old):]
                break
        return f"{side}.mid.attn_1.{inner}"
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out.{'.'.join(rest[1:])}"
    return key  # conv_in, conv_out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> Dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = vae_key_to_ldm(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the LDM VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key if key.startswith("text_model.") else "text_model." + key  # transformers >= 5.6 flattened names
        out[CLIP_PREFIX + key] = value
    positions = out[CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]
    out.setdefault(CLIP_PREFIX + "text_model.embeddings.position_ids", torch.arange(positions)[None])
    return out


def sinusoid_positions(max_len: int, channels: int) -> torch.Tensor:
    """AnimateDiff's temporal ``PositionalEncoding.pe`` buffer, shape (1, max_len, channels)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, max_len, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def motion_adapter_to_original(state_dict: Mapping[str, torch.Tensor], max_seq_length: int) -> Dict[str, torch.Tensor]:
    """diffusers MotionAdapter keys -> the ``mm_sd_v15_*.ckpt`` layout (adds the ``pos_encoder.pe`` buffers)."""
    out: Dict[str, torch.Tensor] = {}
    modules: Dict[str, int] = {}
    for key, value in state_dict.items():
        if key.endswith("pos_embed.pe"):
            continue
        head, sep, tail = key.partition(".motion_modules.")
        index, _, inner = tail.partition(".")
        inner = (inner.replace("attn1.", "attention_blocks.0.").replace("attn2.", "attention_blocks.1.")
                 .replace("norm1.", "norms.0.").replace("norm2.", "norms.1.").replace("norm3.", "ff_norm."))
        prefix = f"{head}{sep}{index}.temporal_transformer."
        out[prefix + inner] = value
        if inner == "proj_in.weight":
            modules[prefix] = value.shape[0]
    for prefix, channels in modules.items():
        blocks = sorted({k[len(prefix):].split(".")[1] for k in out if k.startswith(prefix + "transformer_blocks.")})
        for block in blocks:
            for attention in (0, 1):
                name = f"{prefix}transformer_blocks.{block}.attention_blocks.{attention}.pos_encoder.pe"
                out[name] = sinusoid_positions(max_seq_length, channels)
    return out


def _read_safetensors(folder: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors weights file in {folder}, found {len(files)}")
    return load_file(str(files[0]))


def _read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def sd_folder_to_ldm(model_dir: Path | str) -> Dict[str, torch.Tensor]:
    """The UNet, VAE and text encoder of a diffusers SD1.5-layout folder as one A1111 checkpoint state dict."""
    model_dir = Path(model_dir)
    checkpoint: Dict[str, torch.Tensor] = {}
    checkpoint.update(unet_to_ldm(_read_safetensors(model_dir / "unet"), _read_config(model_dir / "unet")))
    checkpoint.update(vae_to_ldm(_read_safetensors(model_dir / "vae"), _read_config(model_dir / "vae")))
    checkpoint.update(text_encoder_to_ldm(_read_safetensors(model_dir / "text_encoder")))
    return checkpoint


def write_single_file_fixtures(
    model_dir: Path | str, out_dir: Path | str, *, motion_adapter_dir: Path | str | None = None,
    names: Sequence[str] = ("i4vgen_tiny_sd15.safetensors", "mm_i4vgen_tiny_v2.ckpt"),
) -> Tuple[Path, Path]:
    """Write an A1111-style single-file checkpoint and an AnimateDiff ``mm_*.ckpt`` from a diffusers SD folder and
    its motion adapter (default ``model_dir/motion_adapter``). Returns (checkpoint path, motion module path).
    Each file is safetensors or a torch pickle according to its suffix."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    adapter_dir = Path(motion_adapter_dir) if motion_adapter_dir is not None else model_dir / "motion_adapter"
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, mm_path = out_dir / names[0], out_dir / names[1]
    _save(sd_folder_to_ldm(model_dir), ckpt_path)
    adapter = _read_config(adapter_dir)
    _save(motion_adapter_to_original(_read_safetensors(adapter_dir), int(adapter["motion_max_seq_length"])), mm_path)
    return ckpt_path, mm_path


def _save(state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """safetensors for ``.safetensors``, else a plain ``torch.save`` dict (as the released mm_sd_v15_v2.ckpt)."""
    from safetensors.torch import save_file

    if path.suffix.lower() == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, str(path))

"""Fuse kohya / A1111 LoRA files (``<layer>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``) into the weights.

The image and the video UNet share their spatial modules, so one fuse applies the LoRA to both. Layer names are
accepted in the diffusers spelling kohya's sd-scripts write for SD1.5 (``lora_unet_down_blocks_0_attentions_0_...``),
in the LDM spelling some trainers write (``lora_unet_input_blocks_1_1_...``), and for the text encoder with or
without transformers' ``text_model`` level. Fusing needs no peft.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping

import torch
from torch import nn

from ..errors import LoraFileError
from .ldm_convert import unet_key_to_ldm

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


@dataclass
class LoraReport:
    path: str
    weight: float
    layers: int
    unmatched: List[str]

    def to_dict(self) -> dict:
        return {"path": self.path, "weight": self.weight, "layers": self.layers, "unmatched": len(self.unmatched)}


def lora_targets(unet: nn.Module, text_encoder: nn.Module) -> Dict[str, nn.Module]:
    """Every kohya layer name that may address a Linear/Conv2d of the (motion) UNet or the text encoder."""
    targets: Dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        targets["lora_unet_" + name.replace(".", "_")] = module
        if "motion_modules" not in name:
            try:
                ldm = unet_key_to_ldm(name + ".weight", unet.config)[: -len(".weight")]
            except (KeyError, IndexError, ValueError):
                continue
            targets.setdefault("lora_unet_" + ldm.replace(".", "_"), module)
    for name, module in text_encoder.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        flat = name.removeprefix("text_model.")
        targets["lora_te_" + flat.replace(".", "_")] = module
        targets["lora_te_text_model_" + flat.replace(".", "_")] = module
    return targets


def read_lora(path: Path | str) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise LoraFileError(f"LoRA files are read as .safetensors only, got {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, MemoryError):
        raise
    except Exception as err:  # safetensors' SafetensorError: truncated, damaged, or not a safetensors file
        detail = " ".join(str(err).split())[:200]
        raise LoraFileError(f"LoRA {path} is not a readable .safetensors file (truncated or damaged? download it "
                            f"again): {type(err).__name__}: {detail}") from None


@torch.no_grad()
def fuse_lora(targets: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor], weight: float, *,
              path: str = "<memory>") -> LoraReport:
    """W += weight * (alpha / rank) * up @ down for every layer of the file (skipped entirely when weight == 0).

    Every matched layer's shapes are checked before any weight changes: a LoRA made for another model raises
    ``LoraFileError`` naming the file and the first layer that does not fit, and leaves the model untouched."""
    names = [k[: -len(_DOWN)] for k in state_dict if k.endswith(_DOWN)]
    if not names:
        raise LoraFileError(f"{path}: no '*{_DOWN}' tensors; only kohya/A1111-format LoRA files are supported")
    matched: List[str] = []
    unmatched: List[str] = []
    for name in names:
        module = targets.get(name)
        if module is None or name + _UP not in state_dict:
            unmatched.append(name)
            continue
        _check_shapes(path, name, state_dict[name + _DOWN], state_dict[name + _UP], module.weight)
        matched.append(name)
    if not matched:
        raise LoraFileError(f"{path}: none of its {len(names)} LoRA layers match this SD1.5 model (e.g. {names[0]!r})")
    for name in matched if weight != 0 else ():
        module = targets[name]
        down, up = state_dict[name + _DOWN].float(), state_dict[name + _UP].float()
        rank = down.shape[0]
        alpha = state_dict.get(name + _ALPHA)
        scale = (float(alpha) / rank) if alpha is not None else 1.0
        delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape) * (scale * weight)
        target = module.weight
        target.copy_((target.float() + delta.to(target.device)).to(target.dtype))
    if unmatched:
        warnings.warn(f"{path}: {len(unmatched)} of {len(names)} LoRA layers match nothing and were skipped "
                      f"(e.g. {unmatched[0]!r})", stacklevel=2)
    return LoraReport(path=path, weight=float(weight), layers=len(matched), unmatched=unmatched)


def _check_shapes(path: str, name: str, down: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> None:
    """up (out, rank[, 1, 1]) @ down (rank, in[, kh, kw]) must give the layer's (out, in[, kh, kw])."""
    fits = (down.ndim >= 2 and up.ndim >= 2 and up.shape[0] == weight.shape[0]
            and up[0].numel() == down.shape[0] and down[0].numel() == weight[0].numel())
    if not fits:
        raise LoraFileError(
            f"LoRA {path}: layer {name!r} does not fit this model: up {tuple(up.shape)} x down {tuple(down.shape)} "
            f"cannot update a weight of {tuple(weight.shape)} (a LoRA for another model, e.g. SDXL or SD2?)")

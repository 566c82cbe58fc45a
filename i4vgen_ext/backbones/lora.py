"""Fuse LoRA files into the weights through diffusers' own LoRA loader: ``load_lora_weights`` (peft), ``fuse_lora``
at the file's weight, then ``unload_lora_weights``, so no peft layer stays behind. The image and the video UNet share
their spatial modules, so one fuse applies the LoRA to both, and both run plain (fused) layers at the usual speed.

Formats: kohya / A1111 files (``<layer>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``) and diffusers / peft
files (``unet.<module>.lora_A.weight``, ``text_encoder.<module>.lora_B.weight``). Our own code stays only where
diffusers 0.42.1 reads a kohya file differently from what it means:

* layer names in the LDM spelling (``lora_unet_input_blocks_4_1_proj_in``) are renamed to the diffusers spelling
  first: diffusers maps them for SDXL only; on SD1.5 its mapper fails on input_blocks 10 and 11, misplaces the
  upsampler of up_blocks.0, and drops them altogether from a file that also has diffusers-spelled names;
* each layer's alpha / rank is folded into its ``lora_up`` first: diffusers names the alpha of an attention
  projection in its old attention-processor spelling, which matches no module, so such a layer would silently get
  the file's most common alpha instead of its own;
* two kinds of kohya file are fused by ``fuse_lora`` (W += weight * alpha / rank * up @ down): text-encoder
  attention layers without an ``out_proj`` layer (diffusers guesses the key layout from ``out_proj`` and then
  rejects the file or skips those layers) and layers of the motion modules (its converter respells
  ``motion_modules`` as ``motion.modules``, which matches nothing).

Every file is checked (layer names, shapes) before any weight changes. Never unpickles: .safetensors only.
"""
from __future__ import annotations

import contextlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..errors import LoraFileError, MissingDependencyError
from .ldm_convert import unet_key_to_ldm

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_PEFT_A, _PEFT_B = ".lora_A.weight", ".lora_B.weight"
_COMPONENTS = ("unet", "text_encoder")


@dataclass
class LoraReport:
    path: str
    weight: float
    layers: int
    unmatched: List[str]

    def to_dict(self) -> dict:
        return {"path": self.path, "weight": self.weight, "layers": self.layers, "unmatched": len(self.unmatched)}


@dataclass
class _Plan:
    """One checked file: what diffusers gets (a normalized kohya state dict or the file itself) or, for the kohya
    files it cannot read, the matched layer names that ``_add_deltas`` fuses."""
    report: LoraReport
    state_dict: Mapping[str, torch.Tensor]
    matched: List[str] = field(default_factory=list)
    by_hand: bool = False
    diffusers_source: Any = None


def require_peft() -> None:
    """Raise ``MissingDependencyError`` (one line: what to install) when peft, which diffusers' LoRA loader runs
    on, is missing."""
    if importlib.util.find_spec("peft") is None:
        raise MissingDependencyError(
            "LoRA files are loaded through diffusers' LoRA loader, which needs peft (not installed); install it "
            'with: pip install "i4vgen[standalone]"', name="peft")


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


def fuse_loras(unet: nn.Module, text_encoder: nn.Module,
               loras: Sequence[Tuple[str, float, Mapping[str, torch.Tensor]]]) -> List[LoraReport]:
    """Fuse each (path, weight, state dict) into ``unet`` and ``text_encoder``, in order, through diffusers.

    All files are checked first, so a bad file or a LoRA for another model raises ``LoraFileError`` (naming the file
    and what is wrong) before any weight changes; should diffusers itself refuse a file after that, the error is one
    ``LoraFileError`` line too, and earlier files may stay fused (``DiffusersBackbone.load`` drops the model then).
    ``weight == 0`` leaves the weights untouched."""
    targets = lora_targets(unet, text_encoder)
    plans = [_plan(unet, text_encoder, targets, state_dict, float(weight), str(path))
             for path, weight, state_dict in loras]
    if any(not plan.by_hand for plan in plans):
        require_peft()
    for index, plan in enumerate(plans):
        if plan.report.weight == 0:
            continue
        if not plan.by_hand:
            plan.by_hand = not _fuse_with_diffusers(unet, text_encoder, plan, f"i4vgen_lora_{index}")
        if plan.by_hand:
            _add_deltas(targets, plan.state_dict, plan.matched, plan.report.weight)
    return [plan.report for plan in plans]


@torch.no_grad()
def fuse_lora(targets: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor], weight: float, *,
              path: str = "<memory>") -> LoraReport:
    """Our own fusion of one kohya file, kept for the kohya files diffusers cannot read (see the module note):
    W += weight * (alpha / rank) * up @ down for every layer (skipped entirely when weight == 0).

    Every matched layer's shapes are checked before any weight changes: a LoRA made for another model raises
    ``LoraFileError`` naming the file and the first layer that does not fit, and leaves the model untouched."""
    matched, unmatched = _check_kohya(targets, state_dict, path)
    _add_deltas(targets, state_dict, matched, weight)
    return LoraReport(path=path, weight=float(weight), layers=len(matched), unmatched=unmatched)


# ---- checks -------------------------------------------------------------------------------------------------------
def _plan(unet: nn.Module, text_encoder: nn.Module, targets: Mapping[str, nn.Module],
          state_dict: Mapping[str, torch.Tensor], weight: float, path: str) -> _Plan:
    if any(key.endswith(_DOWN) for key in state_dict):
        matched, unmatched = _check_kohya(targets, state_dict, path)
        report = LoraReport(path=path, weight=weight, layers=len(matched), unmatched=unmatched)
        if _diffusers_misreads(matched):
            return _Plan(report, state_dict, matched, by_hand=True)
        normalized = _diffusers_spelled_kohya(unet, text_encoder, targets, state_dict, matched)
        return _Plan(report, state_dict, matched, diffusers_source=normalized)
    layers, unmatched = _check_diffusers_format(unet, text_encoder, state_dict, path)
    report = LoraReport(path=path, weight=weight, layers=layers, unmatched=unmatched)
    return _Plan(report, state_dict, diffusers_source=Path(path) if Path(path).is_file() else dict(state_dict))


def _check_kohya(targets: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor],
                 path: str) -> Tuple[List[str], List[str]]:
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
    _warn_unmatched(path, unmatched, len(names))
    return matched, unmatched


def _check_diffusers_format(unet: nn.Module, text_encoder: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            path: str) -> Tuple[int, List[str]]:
    """Check the peft-spelled layers (``<component>.<module>.lora_A.weight``) of a diffusers-format file; return how
    many of its LoRA layers may match and those that cannot (other diffusers spellings are left to diffusers)."""
    downs = [k for k in state_dict if k.endswith((_PEFT_A, "lora.down.weight", "lora_linear_layer.down.weight"))]
    if not downs:
        raise LoraFileError(f"{path}: no LoRA tensors (neither kohya/A1111 '*{_DOWN}' nor diffusers '*{_PEFT_A}' "
                            f"keys); is it a LoRA file?")
    owners = {"unet": unet, "text_encoder": text_encoder}
    unmatched: List[str] = []
    for key in (k for k in downs if k.endswith(_PEFT_A)):
        stem = key[: -len(_PEFT_A)]
        owner, _, module_path = stem.partition(".")
        module = _find_module(owners.get(owner), module_path)
        if module is None or stem + _PEFT_B not in state_dict:
            unmatched.append(stem)
            continue
        _check_shapes(path, stem, state_dict[key], state_dict[stem + _PEFT_B], module.weight)
    if len(unmatched) == len(downs):
        raise LoraFileError(f"{path}: none of its {len(downs)} LoRA layers match this SD1.5 model "
                            f"(e.g. {unmatched[0]!r})")
    _warn_unmatched(path, unmatched, len(downs))
    return len(downs) - len(unmatched), unmatched


def _find_module(owner: nn.Module | None, module_path: str) -> nn.Module | None:
    if owner is None:
        return None
    for candidate in (module_path, module_path.removeprefix("text_model.")):
        try:
            module = owner.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return module
    return None


def _warn_unmatched(path: str, unmatched: List[str], total: int) -> None:
    if unmatched:
        warnings.warn(f"{path}: {len(unmatched)} of {total} LoRA layers match nothing and were skipped "
                      f"(e.g. {unmatched[0]!r})", stacklevel=4)


def _check_shapes(path: str, name: str, down: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> None:
    """up (out, rank[, 1, 1]) @ down (rank, in[, kh, kw]) must give the layer's (out, in[, kh, kw])."""
    fits = (down.ndim >= 2 and up.ndim >= 2 and up.shape[0] == weight.shape[0]
            and up[0].numel() == down.shape[0] and down[0].numel() == weight[0].numel())
    if not fits:
        raise LoraFileError(
            f"LoRA {path}: layer {name!r} does not fit this model: up {tuple(up.shape)} x down {tuple(down.shape)} "
            f"cannot update a weight of {tuple(weight.shape)} (a LoRA for another model, e.g. SDXL or SD2?)")


# ---- kohya files for diffusers ------------------------------------------------------------------------------------
def _diffusers_misreads(matched: Sequence[str]) -> bool:
    """The kohya files diffusers 0.42.1 cannot read (see the module note)."""
    if any("_motion_modules_" in name for name in matched):
        return True
    text_attention = [name for name in matched if name.startswith("lora_te_") and "_self_attn_" in name]
    return bool(text_attention) and not any(name.endswith("_out_proj") for name in text_attention)


def _diffusers_spelled_kohya(unet: nn.Module, text_encoder: nn.Module, targets: Mapping[str, nn.Module],
                             state_dict: Mapping[str, torch.Tensor], matched: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The matched layers under their diffusers-spelled kohya names, alpha / rank folded into ``lora_up`` (float32,
    as ``fuse_lora`` computes), without the alphas: diffusers then scales every layer by 1."""
    spelling = {id(m): "lora_unet_" + n.replace(".", "_") for n, m in unet.named_modules()}
    spelling.update({id(m): "lora_te_" + n.replace(".", "_") for n, m in text_encoder.named_modules()})
    normalized: Dict[str, torch.Tensor] = {}
    for name in matched:
        down = state_dict[name + _DOWN].float()
        new_name = spelling[id(targets[name])]
        normalized[new_name + _DOWN] = down
        normalized[new_name + _UP] = state_dict[name + _UP].float() * _alpha_over_rank(state_dict, name, down)
    return normalized


def _alpha_over_rank(state_dict: Mapping[str, torch.Tensor], name: str, down: torch.Tensor) -> float:
    alpha = state_dict.get(name + _ALPHA)
    return (float(alpha) / down.shape[0]) if alpha is not None else 1.0


# ---- fusion -------------------------------------------------------------------------------------------------------
def _fuse_with_diffusers(unet: nn.Module, text_encoder: nn.Module, plan: _Plan, adapter: str) -> bool:
    """Load ``plan``'s LoRA as peft adapter ``adapter``, fuse it at the file's weight, and unload every peft layer.
    False (nothing changed) when diffusers took fewer layers than the check matched in a kohya file."""
    loader = _component_loader(unet, text_encoder)
    source = plan.diffusers_source
    kwargs: Dict[str, Any] = {}
    if isinstance(source, Path):  # diffusers reads the file itself: it holds peft's alpha in its header
        kwargs = {"weight_name": source.name, "use_safetensors": True, "local_files_only": True}
        source = str(source.parent)
    try:
        with _quiet_libraries():
            loader.load_lora_weights(source, adapter_name=adapter, **kwargs)
            applied = _adapter_layers(unet, text_encoder, adapter)
            if plan.matched and applied != len(plan.matched):  # a kohya spelling it misreads: ours fuses it
                return False
            if not applied:
                raise LoraFileError(f"{plan.report.path}: none of its LoRA layers match this SD1.5 model")
            components = [name for name, model in zip(_COMPONENTS, (unet, text_encoder))
                          if _adapter_layers(model, None, adapter)]
            loader.fuse_lora(components=components, lora_scale=plan.report.weight, adapter_names=[adapter])
    except (LoraFileError, MemoryError):
        raise
    except Exception as err:  # diffusers / peft refusing the file: a ValueError, a RuntimeError on a shape, ...
        detail = " ".join(str(err).split())[:300]
        raise LoraFileError(f"LoRA {plan.report.path} could not be loaded by diffusers (a LoRA for another model, "
                            f"or a format it does not read?): {type(err).__name__}: {detail}") from None
    finally:
        with _quiet_libraries():
            loader.unload_lora_weights()
    plan.report.layers = applied
    return True


def _adapter_layers(unet: nn.Module, text_encoder: nn.Module | None, adapter: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    models = [m for m in (unet, text_encoder) if m is not None]
    return sum(1 for model in models for module in model.modules()
               if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}))


def _component_loader(unet: nn.Module, text_encoder: nn.Module):
    """The two LoRA-loadable components as diffusers' SD1.5 LoRA loader expects to find them on a pipeline."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    class ComponentLoader(StableDiffusionLoraLoaderMixin):
        hf_device_map = None  # no accelerate device map: the loader then looks for offload hooks on components

        def __init__(self) -> None:
            self.unet, self.text_encoder = unet, text_encoder

        @property
        def components(self) -> Dict[str, nn.Module]:
            return {"unet": self.unet, "text_encoder": self.text_encoder}

    return ComponentLoader()


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers and transformers log a load report per adapter; our checks already said what matters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


@torch.no_grad()
def _add_deltas(targets: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor], matched: Sequence[str],
                weight: float) -> None:
    for name in matched if weight != 0 else ():
        module = targets[name]
        down, up = state_dict[name + _DOWN].float(), state_dict[name + _UP].float()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape) * (
            _alpha_over_rank(state_dict, name, down) * weight)
        target = module.weight
        target.copy_((target.float() + delta.to(target.device)).to(target.dtype))

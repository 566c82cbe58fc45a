"""EVS's Selective Feature Injection on A1111's ldm UNet: which modules are its spatial ``attn1`` layers (never
AnimateDiff's motion modules nor ``attn2``), their resolution levels, and the instance ``forward`` that wraps a layer
(bypassing A1111's optimized kernel) while a ``HostDenoiser``'s video-mode call records or injects. The machinery is
``i4vgen_ext.core.attention``; see ``docs/sfi.md``.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..core import attention as core
from ..core.attention import QKV, AttentionStore, QKVHook
from . import shim

__all__ = ["HostAttentionFeatures", "spatial_self_attention_layers", "select_layers", "attention", "AttentionStore",
           "QKV"]

_SPATIAL_ATTN1 = re.compile(r"^(?:(input_blocks|output_blocks)\.(\d+)|middle_block)\.\d+\.transformer_blocks\.\d+"
                            r"\.attn1$")
_ATTENTION_PARTS = ("to_q", "to_k", "to_v", "to_out", "heads", "scale")
_MISSING = object()


# ---- which layers ----------------------------------------------------------------------------------------------
def spatial_self_attention_layers(unet: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Module name -> ``attn1`` of every spatial transformer block, in the UNet's module order."""
    return {name: module for name, module in unet.named_modules()
            if _SPATIAL_ATTN1.match(name) and all(hasattr(module, part) for part in _ATTENTION_PARTS)}


def _has_layer(block: torch.nn.Module, class_name: str) -> bool:
    return any(type(layer).__name__ == class_name for layer in block.children())


def _resolution_levels(unet: torch.nn.Module) -> Dict[str, int]:
    """'input_blocks.N' / 'output_blocks.N' -> 0 for the highest resolution, +1 per downsampling."""
    levels, level = {}, 0
    for index, block in enumerate(unet.input_blocks):
        levels[f"input_blocks.{index}"] = level
        level += _has_layer(block, "Downsample")
    for index, block in enumerate(unet.output_blocks):
        levels[f"output_blocks.{index}"] = level
        level -= _has_layer(block, "Upsample")
    return levels


def _layer_levels(unet: torch.nn.Module, names: List[str]) -> Dict[str, Optional[int]]:
    """Layer name -> its block's resolution level; None in the middle block."""
    levels, of = _resolution_levels(unet), {}
    for name in names:
        side, index = _SPATIAL_ATTN1.match(name).groups()
        of[name] = None if side is None else levels[f"{side}.{index}"]
    return of


def select_layers(unet: torch.nn.Module, layers: str) -> List[str]:
    """The spatial self-attention layers that ``layers`` names ("deep", "shallow", "all" or a comma list of ldm
    module-name prefixes, each of which must match at least one layer). ValueError when it names none."""
    return core.select_layers(LDM_LAYERS, unet, layers)


# ---- the attention the wrapped layers compute -------------------------------------------------------------------
def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over (rows, heads, tokens, head_dim)."""
    try:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    except TypeError:  # torch < 2.1: no ``scale`` argument
        return (query @ key.transpose(-1, -2) * scale).softmax(dim=-1) @ value


def _hypernetwork_contexts(context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(context for k, context for v) after the loaded hypernetworks, as every A1111 attention forward does."""
    try:
        hypernetwork, shared = shim.module("hypernetworks.hypernetwork"), shim.shared()
    except shim.HostUnavailable:
        return context, context
    return hypernetwork.apply_hypernetworks(getattr(shared, "loaded_hypernetworks", []), context)


def _upcast_attention() -> bool:
    try:
        return bool(getattr(shim.opts(), "upcast_attn", False))
    except (shim.HostUnavailable, AttributeError):
        return False


def _forward_through(module: torch.nn.Module, hook: QKVHook) -> Callable[..., torch.Tensor]:
    """An ldm ``CrossAttention.forward`` that applies ``hook(q, k, v)`` right before the attention product."""

    def forward(x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        if mask is not None:
            raise NotImplementedError("attention masks are not supported with EVS feature injection")
        heads = module.heads
        context_k, context_v = _hypernetwork_contexts(x if context is None else context)
        query, key, value = module.to_q(x), module.to_k(context_k), module.to_v(context_v)
        rows = query.shape[0]
        query, key, value = (t.reshape(rows, t.shape[1], heads, -1).transpose(1, 2) for t in (query, key, value))
        # contiguous: a replayed record and the recording call then run the very same kernel on the same values
        query, key, value = (t.contiguous() for t in hook(query, key, value))
        dtype = query.dtype
        if _upcast_attention():
            query, key, value = query.float(), key.float(), value.float()
        out = attention(query, key, value, module.scale)
        out = out.transpose(1, 2).reshape(rows, -1, heads * out.shape[-1]).to(dtype)
        return module.to_out(out)

    return forward


def _through_forward(module: torch.nn.Module, hook: QKVHook) -> Callable[[], None]:
    """Give ``module`` an instance ``forward`` through ``hook``; undoing puts back exactly what was there (usually
    nothing: the class-level forward)."""
    previous = vars(module).get("forward", _MISSING)
    module.forward = _forward_through(module, hook)

    def restore() -> None:
        if previous is _MISSING:
            vars(module).pop("forward", None)
        else:
            module.forward = previous

    return restore


def wrapped_forwards(modules: Dict[str, torch.nn.Module], hooks: Dict[str, QKVHook]):
    """The named modules with an instance ``forward`` through their hook, put back in ``finally``."""
    return core.wrapped_layers(modules, hooks, _through_forward)


LDM_LAYERS = core.SpatialLayers(
    modules=spatial_self_attention_layers,
    levels=_layer_levels,
    wrap=_through_forward,
    rows_by_position=True,  # without "batch cond/uncond" A1111 runs a CFG call as separate forwards
    naming=" (WebUI layer names are ldm's: input_blocks.N, middle_block, output_blocks.N)")


class HostAttentionFeatures(core.AttentionFeatures):
    """``record_attention`` / ``inject_attention`` for one ``HostDenoiser``; it wraps each of its video-mode calls
    in ``during_call(t)``. One of the two is active at a time."""

    def __init__(self, unet_of: Callable[[], torch.nn.Module]) -> None:
        super().__init__(LDM_LAYERS, unet_of)

"""EVS's Selective Feature Injection on a diffusers UNet: which modules are its spatial ``attn1`` layers (never a
motion module), their resolution levels, and the attention processor that wraps a layer while a denoiser's video-mode
call records or injects. The machinery is ``i4vgen_ext.core.attention``; see ``docs/sfi.md``.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..core import attention as core
from ..core.attention import QKV, AttentionStore, QKVHook

__all__ = ["AttentionStore", "QKV", "SelfAttentionFeatures", "QKVProcessor", "spatial_self_attention_layers",
           "select_layers"]

_SPATIAL_ATTN1 = re.compile(r"^(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+"
                            r"\.attn1$")


# ---- which layers ----------------------------------------------------------------------------------------------
def spatial_self_attention_layers(unet: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Module name -> ``attn1`` of every spatial transformer block, in the UNet's module order."""
    return {name: module for name, module in unet.named_modules() if _SPATIAL_ATTN1.match(name)}


def _resolution_level(name: str, unet: torch.nn.Module) -> Optional[int]:
    """0 = the highest resolution, growing with each downsampling; None for the mid block."""
    match = _SPATIAL_ATTN1.match(name)
    side, index = match.group(1), match.group(2)
    if side is None:
        return None
    return int(index) if side == "down_blocks" else len(unet.up_blocks) - 1 - int(index)


def select_layers(unet: torch.nn.Module, layers: str) -> List[str]:
    """The spatial self-attention layers that ``layers`` names ("deep", "shallow", "all" or a comma list of
    diffusers module-name prefixes: "up_blocks.1", "mid_block", "down_blocks.2.attentions.0")."""
    return core.select_layers(DIFFUSERS_LAYERS, unet, layers)


# ---- the processor ---------------------------------------------------------------------------------------------
class QKVProcessor:
    """diffusers' ``AttnProcessor2_0`` computation with ``hook(query, key, value)`` applied right before the
    attention product (per-head layout). With a hook that returns its inputs it computes what AttnProcessor2_0
    computes, op for op."""

    def __init__(self, hook: QKVHook) -> None:
        self.hook = hook

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        query, key, value = self.hook(query, key, value)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _through_processor(module: torch.nn.Module, hook: QKVHook) -> Callable[[], None]:
    original = module.processor
    module.set_processor(QKVProcessor(hook))
    return lambda: module.set_processor(original)


def hooked_processors(unet: torch.nn.Module, hooks: Dict[str, QKVHook]):
    """Run ``unet``'s named attention layers through ``QKVProcessor``s; the original processor objects are put
    back in ``finally``."""
    return core.wrapped_layers(spatial_self_attention_layers(unet), hooks, _through_processor)


DIFFUSERS_LAYERS = core.SpatialLayers(
    modules=spatial_self_attention_layers,
    levels=lambda unet, names: {n: _resolution_level(n, unet) for n in names},
    wrap=_through_processor,
    rows_by_position=False)  # one UNet forward per call, CFG halves included


class SelfAttentionFeatures(core.AttentionFeatures):
    """Recording and injection of one diffusers UNet's spatial self-attention features, for one denoiser. Processors
    are swapped in only around the video-mode calls of the denoiser that asked and put back (the very same objects)
    in ``finally``: the image-mode view shares these modules, and so may another denoiser (EVS's inverter)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        super().__init__(DIFFUSERS_LAYERS, lambda: self.unet)

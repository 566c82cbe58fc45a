"""Selective Feature Injection (EVS, Su et al. CVPR 2025, Eq. 11) on a diffusers UNet's spatial self-attention.

The WebUI's ldm UNet has its own wrapping and layer-name table in ``i4vgen_ext/webui/attention.py``.

While recording, every video-mode UNet call files the query, key and value of the chosen ``attn1`` layers (the
spatial transformer blocks' self-attention, never a motion module) into an ``AttentionStore``. While injecting,
those layers attend with

    Attn(gamma * Q_inv + (1 - gamma) * Q, K_inv, V_inv)

where Q_inv, K_inv, V_inv come from the store and Q is the layer's own query. gamma = 1 in every layer reproduces
the recorded attention outputs; the paper's balance points are gamma = 0.8 in the deep layers, 0.5 in the shallow
ones.

Processors are swapped in only around each video-mode call of the denoiser that asked for it and restored (the
very same objects) in ``finally``: the image-mode view shares these attention modules with the video UNet, and
another denoiser over the same UNet (EVS's no-CFG inverter) must not see them either.

Which record a call uses: records are filed under a *key*, the call's timestep unless an enclosing
``store.filed_under(level)`` names another; injection at timestep t reads the records filed under t. EVS's DDIM
inversion files each step under the level it reaches (see ``evs.ddim_invert``).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..core.evs import parse_sfi_layers

__all__ = ["AttentionStore", "QKV", "SelfAttentionFeatures", "QKVProcessor", "spatial_self_attention_layers",
           "select_layers"]

_SPATIAL_ATTN1 = re.compile(r"^(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+"
                            r"\.attn1$")

QKVHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    """The spatial self-attention layers that ``layers`` names.

    "deep": the mid block and the lowest-resolution down/up blocks that have spatial attention; "shallow": the
    highest-resolution ones; "all": every one; otherwise a comma list of module-name prefixes ("up_blocks.1",
    "mid_block", "down_blocks.2.attentions.0"), each of which must match at least one layer."""
    names = list(spatial_self_attention_layers(unet))
    if not names:
        raise ValueError(f"{type(unet).__name__} has no spatial self-attention layers to record or inject")
    selection = parse_sfi_layers(layers)
    if isinstance(selection, tuple):
        chosen = []
        for prefix in selection:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"no spatial self-attention layer starts with {prefix!r}; the layers are: "
                                 + ", ".join(names))
            chosen.extend(hits)
        return [n for n in names if n in chosen]
    if selection == "all":
        return names
    levels = {n: _resolution_level(n, unet) for n in names}
    block_levels = [level for level in levels.values() if level is not None]
    if selection == "shallow":
        return [n for n in names if levels[n] is not None and levels[n] == min(block_levels)]
    deepest = max(block_levels, default=None)
    return [n for n in names if levels[n] is None or levels[n] == deepest]


# ---- what is kept ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QKV:
    """One layer's attention inputs as they enter the attention product: (rows, heads, tokens, head_dim) each."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


class AttentionStore:
    """Recorded Q, K, V by (key, layer name); ``keep``: the only keys worth keeping (None: every key).

    Rows are the UNet's batch rows as computed (B*F for a video; [uncond, cond] halves under CFG). Memory is
    3 x rows x tokens x channels per layer and kept key, in the model's dtype and on its device."""

    def __init__(self, layers: Sequence[str], keep: Optional[Collection[int]] = None) -> None:
        self.layers: Tuple[str, ...] = tuple(layers)
        self.keep = None if keep is None else frozenset(int(k) for k in keep)
        self.records: Dict[Tuple[int, str], QKV] = {}
        self._level: Optional[int] = None

    @contextmanager
    def filed_under(self, level: int) -> Iterator[None]:
        """File the records of the calls made inside under ``level`` instead of each call's own timestep."""
        previous, self._level = self._level, int(level)
        try:
            yield
        finally:
            self._level = previous

    def key_for(self, timestep: int) -> int:
        return int(timestep) if self._level is None else self._level

    def wants(self, key: int) -> bool:
        return self.keep is None or key in self.keep

    def put(self, key: int, layer: str, qkv: QKV) -> None:
        self.records[(key, layer)] = qkv  # a later call at the same key replaces the earlier one

    def get(self, key: int, layer: str) -> QKV:
        try:
            return self.records[(key, layer)]
        except KeyError:
            raise LookupError(f"no recorded attention for timestep {key} in {layer}; recorded timesteps: "
                              f"{self.timesteps}") from None

    @property
    def timesteps(self) -> List[int]:
        return sorted({key for key, _ in self.records}, reverse=True)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for r in self.records.values() for t in (r.query, r.key, r.value))


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


@contextmanager
def hooked_processors(unet: torch.nn.Module, hooks: Dict[str, QKVHook]) -> Iterator[None]:
    """Run ``unet``'s named attention layers through ``QKVProcessor``s; the original processor objects are put
    back in ``finally``."""
    modules = spatial_self_attention_layers(unet)
    originals = {name: modules[name].processor for name in hooks}
    try:
        for name, hook in hooks.items():
            modules[name].set_processor(QKVProcessor(hook))
        yield
    finally:
        for name, original in originals.items():
            modules[name].set_processor(original)


# ---- recording and injecting -----------------------------------------------------------------------------------
def _matching_rows(recorded: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """A record made without CFG (B*F rows) serves both halves of a CFG call (2*B*F rows)."""
    rows = like.shape[0]
    if recorded.shape[1:] != like.shape[1:] or rows % recorded.shape[0]:
        raise ValueError(f"recorded {what} of shape {tuple(recorded.shape)} does not fit a call whose {what} has "
                         f"shape {tuple(like.shape)} (different size, frame count or batch)")
    if rows != recorded.shape[0]:
        recorded = recorded.repeat(rows // recorded.shape[0], *([1] * (recorded.ndim - 1)))
    return recorded.to(like)


class SelfAttentionFeatures:
    """Recording and injection of one UNet's spatial self-attention features, for one denoiser.

    The denoiser wraps each of its video-mode UNet calls in ``during_call(t)``; ``record`` and ``inject`` are its
    ``record_attention`` / ``inject_attention``. Only one of them is active at a time."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self._hooks_at: Optional[Callable[[int], Dict[str, QKVHook]]] = None

    def record(self, layers: str = "all", *, timesteps: Optional[Collection[int]] = None):
        """Context manager yielding an ``AttentionStore``; ``timesteps``: keep only records filed under these."""
        store = AttentionStore(select_layers(self.unet, layers), timesteps)  # bad layers fail here, at the call

        def hooks_at(timestep: int) -> Dict[str, QKVHook]:
            key = store.key_for(timestep)
            return {name: _recorder(store, key, name) for name in store.layers} if store.wants(key) else {}

        return self._active(hooks_at, store)

    def inject(self, store: AttentionStore, gamma: float, layers: str = "all"):
        """Context manager: the chosen layers attend with gamma*Q_inv + (1-gamma)*Q, K_inv, V_inv (Eq. 11)."""
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        names = select_layers(self.unet, layers)
        missing = [n for n in names if n not in store.layers]
        if missing:
            raise ValueError(f"the store did not record {', '.join(missing)} (it has {', '.join(store.layers)})")

        def hooks_at(timestep: int) -> Dict[str, QKVHook]:
            return {name: _injector(store, int(timestep), name, float(gamma)) for name in names}

        return self._active(hooks_at, None)

    @contextmanager
    def _active(self, hooks_at: Callable[[int], Dict[str, QKVHook]], value) -> Iterator:
        if self._hooks_at is not None:
            raise RuntimeError("attention recording or injection is already active on this denoiser")
        self._hooks_at = hooks_at
        try:
            yield value
        finally:
            self._hooks_at = None

    @contextmanager
    def during_call(self, timestep: int) -> Iterator[None]:
        if self._hooks_at is None:
            yield
            return
        with hooked_processors(self.unet, self._hooks_at(int(timestep))):
            yield


def _recorder(store: AttentionStore, key: int, name: str) -> QKVHook:
    def record(query, key_, value):
        store.put(key, name, QKV(query.detach(), key_.detach(), value.detach()))
        return query, key_, value

    return record


def _injector(store: AttentionStore, timestep: int, name: str, gamma: float) -> QKVHook:
    def inject(query, key, value):
        recorded = store.get(timestep, name)
        q_inv = _matching_rows(recorded.query, query, "query")
        k_inv = _matching_rows(recorded.key, key, "key")
        v_inv = _matching_rows(recorded.value, value, "value")
        return gamma * q_inv + (1 - gamma) * query, k_inv, v_inv

    return inject

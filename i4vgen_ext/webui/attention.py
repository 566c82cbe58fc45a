"""EVS's Selective Feature Injection (Eq. 11) on A1111's ldm UNet: recording and injecting the spatial
self-attention features of a ``HostDenoiser``'s video-mode calls.

The layers are the ``attn1`` of the spatial transformer blocks, ``<block>.<i>.transformer_blocks.<j>.attn1`` under
``input_blocks.N``, ``middle_block`` and ``output_blocks.N`` (ldm ``CrossAttention``: ``to_q``/``to_k``/``to_v``,
``to_out``, ``heads``, ``scale``). AnimateDiff's motion modules sit in the same blocks but are named
``<block>.<i>.temporal_transformer.transformer_blocks.<j>.attention_blocks.<k>``, and ``attn2`` is the text
cross-attention: neither ever matches.

How the host runs them: A1111 replaces ``CrossAttention.forward`` at class level with its optimized forward
(``modules/sd_hijack_optimizations.py``: sdp, xformers, sub-quadratic, ...). Around each video-mode call of the
denoiser that asked, and only then, the chosen layers get an instance ``forward`` that computes the attention
itself: q, k, v from ``to_q``/``to_k``/``to_v`` (k and v from the hypernetwork-applied context, as A1111's forwards
do), split into ``heads``, softmax(q k^T * scale) v with torch's ``scaled_dot_product_attention`` given ``scale``
explicitly, then ``to_out``; ``opts.upcast_attn`` upcasts as A1111 does. This bypasses the optimized kernel for
those layers only. In ``finally`` the instance attribute is removed (or a previous one put back), so the class-level
optimized forward runs again; image-mode calls and the other denoisers over the same UNet never see the wrapper.

Records: per (key, layer) the rows of one call in call order, concatenated over the UNet forwards the call made
(A1111's CFG batch is [cond rows, uncond rows]; without "batch cond/uncond" they come as separate forwards). The key
is the call's timestep or an enclosing ``store.filed_under(level)``. Injection maps forward rows to record rows by
their position in the call: the same rows when the record has them; a record of only the cond rows (a call that
skipped the uncond half) serves every half. EVS's inverter (guidance 1) still runs A1111's CFG batch, so its uncond
rows serve the video steps' uncond rows (the diffusers inverter computes cond rows only, which serve both halves).
Records are in the model's dtype, on its device.

Layer names (what ``evs_sfi_layers`` takes in the WebUI), next to the diffusers names of
``backbones/feature_injection.py``, for SD1.5:

| selection | ldm (WebUI) | diffusers (CLI) |
|---|---|---|
| ``deep`` | ``middle_block``, ``input_blocks.7``, ``.8``, ``output_blocks.3``, ``.4``, ``.5`` | ``mid_block``, ``down_blocks.2``, ``up_blocks.1`` |
| ``shallow`` | ``input_blocks.1``, ``.2``, ``output_blocks.9``, ``.10``, ``.11`` | ``down_blocks.0``, ``up_blocks.3`` |
| ``all`` | all 16 | all 16 |
| prefixes | e.g. ``middle_block,output_blocks.3`` | e.g. ``mid_block,up_blocks.1`` |

"deep" is the middle block plus the lowest-resolution input/output blocks that have spatial attention, "shallow"
the highest-resolution ones. A block's resolution level counts the ``Downsample`` layers in the input blocks
before it (and, for an output block, subtracts the ``Upsample`` layers in the output blocks before it), as ldm's
``UNetModel`` builds them.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Collection, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..backbones.feature_injection import QKV, AttentionStore
from ..core.evs import parse_sfi_layers
from . import shim

__all__ = ["HostAttentionFeatures", "spatial_self_attention_layers", "select_layers", "attention"]

_SPATIAL_ATTN1 = re.compile(r"^(?:(input_blocks|output_blocks)\.(\d+)|middle_block)\.\d+\.transformer_blocks\.\d+"
                            r"\.attn1$")
_ATTENTION_PARTS = ("to_q", "to_k", "to_v", "to_out", "heads", "scale")
_MISSING = object()

QKVHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


def _block_of(name: str) -> str:
    match = _SPATIAL_ATTN1.match(name)
    return "middle_block" if match.group(1) is None else f"{match.group(1)}.{match.group(2)}"


def select_layers(unet: torch.nn.Module, layers: str) -> List[str]:
    """The spatial self-attention layers that ``layers`` names ("deep", "shallow", "all" or a comma list of ldm
    module-name prefixes, each of which must match at least one layer). ValueError when it names none."""
    names = list(spatial_self_attention_layers(unet))
    if not names:
        raise ValueError(f"{type(unet).__name__} has no spatial self-attention layers to record or inject")
    selection = parse_sfi_layers(layers)
    if isinstance(selection, tuple):
        chosen = set()
        for prefix in selection:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"no spatial self-attention layer starts with {prefix!r} (WebUI layer names are "
                                 f"ldm's: input_blocks.N, middle_block, output_blocks.N); the layers are: "
                                 + ", ".join(names))
            chosen.update(hits)
        return [n for n in names if n in chosen]
    if selection == "all":
        return names
    levels = _resolution_levels(unet)
    level_of = {n: None if _block_of(n) == "middle_block" else levels[_block_of(n)] for n in names}
    block_levels = [level for level in level_of.values() if level is not None]
    if selection == "shallow":
        return [n for n in names if level_of[n] is not None and level_of[n] == min(block_levels)]
    deepest = max(block_levels, default=None)
    return [n for n in names if level_of[n] is None or level_of[n] == deepest]


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


@contextmanager
def wrapped_forwards(modules: Dict[str, torch.nn.Module], hooks: Dict[str, QKVHook]) -> Iterator[None]:
    """Give the named modules an instance ``forward`` through their hook; put back exactly what was there (usually
    nothing: the class-level forward) in ``finally``."""
    saved = {}
    try:
        for name, hook in hooks.items():
            module = modules[name]
            saved[name] = vars(module).get("forward", _MISSING)
            module.forward = _forward_through(module, hook)
        yield
    finally:
        for name, previous in saved.items():
            if previous is _MISSING:
                vars(modules[name]).pop("forward", None)
            else:
                modules[name].forward = previous


# ---- recording and injecting -----------------------------------------------------------------------------------
def _record_rows(recorded: torch.Tensor, like: torch.Tensor, offset: int, what: str) -> torch.Tensor:
    """The record's rows for a forward whose ``like`` rows start at ``offset`` in its call."""
    rows, kept = like.shape[0], recorded.shape[0]
    if recorded.shape[1:] != like.shape[1:]:
        raise ValueError(f"recorded {what} of shape {tuple(recorded.shape)} does not fit a call whose {what} has "
                         f"shape {tuple(like.shape)} (different size or frame count)")
    if offset + rows > kept and (offset % kept or rows % kept):
        raise ValueError(f"a recorded call of {kept} rows cannot serve rows {offset}..{offset + rows - 1} of this "
                         f"call (different frame count or batch)")
    index = torch.arange(offset, offset + rows, device=recorded.device) % kept
    return recorded[index].to(like)


class _Recording:
    def __init__(self, store: AttentionStore) -> None:
        self.store = store

    def hooks_for_call(self, timestep: int) -> Tuple[Dict[str, QKVHook], Callable[[], None]]:
        key = self.store.key_for(timestep)
        if not self.store.wants(key):
            return {}, lambda: None
        parts: Dict[str, List[QKV]] = {name: [] for name in self.store.layers}

        def recorder(name: str) -> QKVHook:
            def record(query, key_, value):
                parts[name].append(QKV(query.detach(), key_.detach(), value.detach()))
                return query, key_, value

            return record

        def finish() -> None:  # a call that raised files nothing
            for name, recorded in parts.items():
                if recorded:
                    self.store.put(key, name, QKV(*(torch.cat([getattr(r, f) for r in recorded])
                                                    for f in ("query", "key", "value"))))

        return {name: recorder(name) for name in self.store.layers}, finish


class _Injecting:
    def __init__(self, store: AttentionStore, layers: List[str], gamma: float) -> None:
        self.store, self.layers, self.gamma = store, layers, gamma

    def hooks_for_call(self, timestep: int) -> Tuple[Dict[str, QKVHook], Callable[[], None]]:
        records = {name: self.store.get(int(timestep), name) for name in self.layers}  # LookupError before the UNet
        gamma = self.gamma

        def injector(recorded: QKV) -> QKVHook:
            offset = 0

            def inject(query, key, value):
                nonlocal offset
                q_inv = _record_rows(recorded.query, query, offset, "query")
                k_inv = _record_rows(recorded.key, key, offset, "key")
                v_inv = _record_rows(recorded.value, value, offset, "value")
                offset += query.shape[0]
                return gamma * q_inv + (1 - gamma) * query, k_inv, v_inv

            return inject

        return {name: injector(recorded) for name, recorded in records.items()}, lambda: None


class HostAttentionFeatures:
    """``record_attention`` / ``inject_attention`` for one ``HostDenoiser``; it wraps each of its video-mode calls
    in ``during_call(t)``. One of the two is active at a time."""

    def __init__(self, unet_of: Callable[[], torch.nn.Module]) -> None:
        self._unet_of = unet_of
        self._mode = None

    def record(self, layers: str = "all", *, timesteps: Optional[Collection[int]] = None):
        """Context manager yielding an ``AttentionStore``; ``timesteps``: keep only records filed under these."""
        store = AttentionStore(select_layers(self._unet_of(), layers), timesteps)  # bad layers fail here
        return self._active(_Recording(store), store)

    def inject(self, store: AttentionStore, gamma: float, layers: str = "all"):
        """Context manager: the chosen layers attend with gamma*Q_inv + (1-gamma)*Q, K_inv, V_inv (Eq. 11)."""
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        names = select_layers(self._unet_of(), layers)
        missing = [n for n in names if n not in store.layers]
        if missing:
            raise ValueError(f"the store did not record {', '.join(missing)} (it has {', '.join(store.layers)})")
        return self._active(_Injecting(store, names, float(gamma)), None)

    @contextmanager
    def _active(self, mode, value) -> Iterator:
        if self._mode is not None:
            raise RuntimeError("attention recording or injection is already active on this denoiser")
        self._mode = mode
        try:
            yield value
        finally:
            self._mode = None

    @contextmanager
    def during_call(self, timestep: int) -> Iterator[None]:
        if self._mode is None:
            yield
            return
        hooks, finish = self._mode.hooks_for_call(int(timestep))
        if not hooks:
            yield
            return
        with wrapped_forwards(spatial_self_attention_layers(self._unet_of()), hooks):
            yield
        finish()

"""EVS's Selective Feature Injection (Su et al. CVPR 2025, Eq. 11), the part every host shares: the store of
recorded Q, K, V, the layer selection, the record and inject hooks and the context managers that activate them
around a denoiser's video-mode UNet calls. A host adapter says which modules are its spatial ``attn1`` layers,
their resolution levels and how one layer's attention is wrapped (``SpatialLayers``). See ``docs/sfi.md``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Collection, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .evs import parse_sfi_layers

__all__ = ["QKV", "QKVHook", "AttentionStore", "SpatialLayers", "select_layers", "record_rows", "wrapped_layers",
           "AttentionFeatures"]

QKVHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# ---- what is kept ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QKV:
    """One layer's attention inputs as they enter the attention product: (rows, heads, tokens, head_dim) each."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


class AttentionStore:
    """Recorded Q, K, V by (key, layer name); ``keep``: the only keys worth keeping (None: every key).

    A key is the call's timestep unless an enclosing ``filed_under(level)`` names another (EVS's DDIM inversion
    files each step under the level it reaches). Rows are the UNet's batch rows as computed. Memory is
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


# ---- a host's layers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpatialLayers:
    """How one host names and wraps the spatial self-attention layers of its UNet.

    ``modules(unet)``: module name -> ``attn1`` of every spatial transformer block, in module order.
    ``levels(unet, names)``: name -> resolution level (0 = the highest resolution, +1 per downsampling; None for
    the middle block). ``wrap(module, hook)``: make the layer apply ``hook(q, k, v)`` right before its attention
    product; returns what undoes exactly that. ``rows_by_position``: False when one UNet forward is the whole
    call (records are filed per forward, a record serves a forward whose rows are a multiple of its own); True
    when a call may run several forwards (records concatenate the call's forwards and are filed when it returns;
    injection maps rows by their position in the call, see ``record_rows``). ``naming``: a hint on the host's
    layer names for the error on an unknown prefix."""

    modules: Callable[[torch.nn.Module], Dict[str, torch.nn.Module]]
    levels: Callable[[torch.nn.Module, Sequence[str]], Dict[str, Optional[int]]]
    wrap: Callable[[torch.nn.Module, QKVHook], Callable[[], None]]
    rows_by_position: bool
    naming: str = ""


def select_layers(host: SpatialLayers, unet: torch.nn.Module, layers: str) -> List[str]:
    """The spatial self-attention layers that ``layers`` names, in module order.

    "deep": the middle block and the lowest-resolution blocks that have spatial attention; "shallow": the
    highest-resolution ones; "all": every one; otherwise a comma list of module-name prefixes, each of which must
    match at least one layer. ValueError when it names none."""
    names = list(host.modules(unet))
    if not names:
        raise ValueError(f"{type(unet).__name__} has no spatial self-attention layers to record or inject")
    selection = parse_sfi_layers(layers)
    if isinstance(selection, tuple):
        chosen = set()
        for prefix in selection:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"no spatial self-attention layer starts with {prefix!r}{host.naming}; the layers "
                                 f"are: " + ", ".join(names))
            chosen.update(hits)
        return [n for n in names if n in chosen]
    if selection == "all":
        return names
    levels = host.levels(unet, names)
    block_levels = [level for level in levels.values() if level is not None]
    if selection == "shallow":
        return [n for n in names if levels[n] is not None and levels[n] == min(block_levels)]
    deepest = max(block_levels, default=None)
    return [n for n in names if levels[n] is None or levels[n] == deepest]


@contextmanager
def wrapped_layers(modules: Dict[str, torch.nn.Module], hooks: Dict[str, QKVHook],
                   wrap: Callable[[torch.nn.Module, QKVHook], Callable[[], None]]) -> Iterator[None]:
    """The named modules wrapped through their hooks; every wrapper is undone in ``finally``."""
    undo: List[Callable[[], None]] = []
    try:
        for name, hook in hooks.items():
            undo.append(wrap(modules[name], hook))
        yield
    finally:
        for restore in reversed(undo):
            restore()


# ---- recording and injecting -----------------------------------------------------------------------------------
def record_rows(recorded: torch.Tensor, like: torch.Tensor, offset: Optional[int], what: str) -> torch.Tensor:
    """The record's rows for a forward's ``like`` rows.

    ``offset`` None (one forward is the whole call): ``like``'s rows must be a multiple of the record's; a record
    made without CFG (B*F rows) serves both halves of a CFG call (2*B*F rows). ``offset`` n (the forward's rows
    start at n in its call): rows by position in the call, modulo the record's rows: the same rows when the
    record has them; a record of only the first half serves every half."""
    rows, kept = like.shape[0], recorded.shape[0]
    whole = offset is None
    if recorded.shape[1:] != like.shape[1:] or (whole and rows % kept):
        raise ValueError(f"recorded {what} of shape {tuple(recorded.shape)} does not fit a call whose {what} has "
                         f"shape {tuple(like.shape)} (different size"
                         + (", frame count or batch)" if whole else " or frame count)"))
    offset = offset or 0
    if offset + rows > kept and (offset % kept or rows % kept):
        raise ValueError(f"a recorded call of {kept} rows cannot serve rows {offset}..{offset + rows - 1} of this "
                         f"call (different frame count or batch)")
    index = torch.arange(offset, offset + rows, device=recorded.device) % kept
    return recorded[index].to(like)


def _nothing() -> None:
    pass


def _recorder(file: Callable[[QKV], None]) -> QKVHook:
    def record(query, key, value):
        file(QKV(query.detach(), key.detach(), value.detach()))
        return query, key, value

    return record


def _injector(recorded: Callable[[], QKV], gamma: float, by_position: bool) -> QKVHook:
    offset = 0

    def inject(query, key, value):
        nonlocal offset
        qkv, at = recorded(), offset if by_position else None
        q_inv = record_rows(qkv.query, query, at, "query")
        k_inv = record_rows(qkv.key, key, at, "key")
        v_inv = record_rows(qkv.value, value, at, "value")
        offset += query.shape[0]
        return gamma * q_inv + (1 - gamma) * query, k_inv, v_inv

    return inject


class _Recording:
    def __init__(self, store: AttentionStore, by_position: bool) -> None:
        self.store, self.by_position = store, by_position

    def hooks_for_call(self, timestep: int) -> Tuple[Dict[str, QKVHook], Callable[[], None]]:
        store, key = self.store, self.store.key_for(timestep)
        if not store.wants(key):
            return {}, _nothing
        if not self.by_position:  # one forward per call: filed as it is computed
            return {name: _recorder(partial(store.put, key, name)) for name in store.layers}, _nothing
        parts: Dict[str, List[QKV]] = {name: [] for name in store.layers}

        def finish() -> None:  # a call that raised files nothing
            for name, recorded in parts.items():
                if recorded:
                    store.put(key, name, QKV(*(torch.cat([getattr(r, f) for r in recorded])
                                               for f in ("query", "key", "value"))))

        return {name: _recorder(parts[name].append) for name in store.layers}, finish


class _Injecting:
    def __init__(self, store: AttentionStore, layers: List[str], gamma: float, by_position: bool) -> None:
        self.store, self.layers, self.gamma, self.by_position = store, layers, gamma, by_position

    def hooks_for_call(self, timestep: int) -> Tuple[Dict[str, QKVHook], Callable[[], None]]:
        if self.by_position:  # the call's records up front: LookupError before the UNet runs
            get = {name: self.store.get(int(timestep), name) for name in self.layers}.__getitem__
        else:  # looked up by the forward that reads them
            get = partial(self.store.get, int(timestep))
        return {name: _injector(partial(get, name), self.gamma, self.by_position) for name in self.layers}, _nothing


class AttentionFeatures:
    """Recording and injection of one UNet's spatial self-attention features, for one denoiser.

    The denoiser wraps each of its video-mode UNet calls in ``during_call(t)``; ``record`` and ``inject`` are its
    ``record_attention`` / ``inject_attention``. Only one of them is active at a time."""

    def __init__(self, host: SpatialLayers, unet_of: Callable[[], torch.nn.Module]) -> None:
        self._host, self._unet_of = host, unet_of
        self._mode = None

    def record(self, layers: str = "all", *, timesteps: Optional[Collection[int]] = None) -> ContextManager:
        """Context manager yielding an ``AttentionStore``; ``timesteps``: keep only records filed under these."""
        store = AttentionStore(select_layers(self._host, self._unet_of(), layers), timesteps)  # bad layers fail here
        return self._active(_Recording(store, self._host.rows_by_position), store)

    def inject(self, store: AttentionStore, gamma: float, layers: str = "all") -> ContextManager:
        """Context manager: the chosen layers attend with gamma*Q_inv + (1-gamma)*Q, K_inv, V_inv (Eq. 11)."""
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        names = select_layers(self._host, self._unet_of(), layers)
        missing = [n for n in names if n not in store.layers]
        if missing:
            raise ValueError(f"the store did not record {', '.join(missing)} (it has {', '.join(store.layers)})")
        return self._active(_Injecting(store, names, float(gamma), self._host.rows_by_position), None)

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
        unet = self._unet_of()
        with wrapped_layers(self._host.modules(unet), hooks, self._host.wrap):
            yield
        finish()

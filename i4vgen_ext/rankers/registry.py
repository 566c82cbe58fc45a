"""Ranker names -> loaders (imported only when that ranker loads), a per-process cache, and the fallback policy."""
from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .base import DTypeLike, NoneRanker, Ranker, RankerLoadError, is_out_of_memory, resolve_dtype
from .locate import PathLike
from .locate import webui_models_dir as resolve_webui_models_dir

log = logging.getLogger("i4vgen.rankers")

# A loader is called as loader(path, device=..., dtype=..., offline=..., webui_models_dir=...) -> Ranker.
Loader = Callable[..., Ranker]
_LOADERS: Dict[str, Union[str, Loader]] = {
    "imagereward": "i4vgen_ext.rankers.imagereward:load_imagereward",
    "clip": "i4vgen_ext.rankers.clip:load_clip",
    "pickscore": "i4vgen_ext.rankers.clip:load_pickscore",
    "none": lambda path=None, **_: NoneRanker(),
}
DEFAULT_RANKER = "imagereward"
FALLBACKS = ("error", "none")

_cache: Dict[Tuple[Any, ...], Ranker] = {}
_cache_lock = threading.RLock()  # re-entrant: a loader may load another ranker


def available_rankers() -> Tuple[str, ...]:
    return tuple(_LOADERS)


def register_ranker(name: str, loader: Union[str, Loader]) -> None:
    """Add (or replace) a ranker: a loader callable, or ``"package.module:function"`` imported when first used."""
    _LOADERS[name] = loader


def _loader(name: str) -> Loader:
    try:
        entry = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown ranker {name!r}; choose one of {', '.join(_LOADERS)}") from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def _cache_key(name: str, path: Optional[PathLike], device: Any, dtype: DTypeLike, webui: Optional[Path]) -> tuple:
    resolved = str(Path(path).expanduser().resolve()) if path not in (None, "") else None
    return name, resolved, str(device), str(resolve_dtype(dtype)), str(webui) if webui else None


def load_ranker(
    name: str = DEFAULT_RANKER,
    path: Optional[PathLike] = None,
    device: Any = "cpu",
    dtype: DTypeLike = None,
    offline: bool = False,
    *,
    webui_models_dir: Optional[PathLike] = None,
    use_cache: bool = True,
) -> Ranker:
    """The ranker ``name``, loaded once per (name, path, device, dtype) in this process and reused
    (``use_cache=False``: a fresh load, not kept).

    ``path`` is a folder with that ranker's files; without it the usual places are searched (see each ranker).
    Raises RankerLoadError when its files are missing or unusable, ValueError for an unknown name."""
    loader = _loader(name)
    webui = resolve_webui_models_dir(webui_models_dir)
    key = _cache_key(name, path, device, dtype, webui)
    with _cache_lock:
        cached = _cache.get(key) if use_cache else None
        if cached is not None and getattr(cached, "is_loaded", True):
            return cached
        try:
            ranker = loader(path, device=device, dtype=dtype, offline=offline, webui_models_dir=webui)
        except RankerLoadError:
            raise
        except Exception as error:
            if is_out_of_memory(error):
                raise RankerLoadError(name, "out of memory", [], "free memory or pick a smaller ranker",
                                      str(error)) from error
            raise
        if use_cache:
            _cache[key] = ranker
        return ranker


def load_ranker_with_fallback(
    name: str = DEFAULT_RANKER,
    path: Optional[PathLike] = None,
    fallback: str = "error",
    device: Any = "cpu",
    dtype: DTypeLike = None,
    offline: bool = False,
    webui_models_dir: Optional[PathLike] = None,
) -> Tuple[Ranker, str]:
    """(ranker, label to record). With ``fallback="none"`` a ranker that cannot load is logged and replaced by
    ``none``, recorded as ``none (fallback: <reason>)``; with ``"error"`` the RankerLoadError propagates."""
    if fallback not in FALLBACKS:
        raise ValueError(f"ranker fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    try:
        ranker = load_ranker(name, path, device, dtype, offline, webui_models_dir=webui_models_dir)
    except RankerLoadError as error:
        if fallback == "error":
            raise
        log.warning("%s\nfalling back to ranker 'none': candidate 0 becomes the anchor", error)
        return NoneRanker(), f"none (fallback: {error.ranker} {error.reason})"
    return ranker, ranker.name


def cached_rankers() -> Dict[Tuple[Any, ...], Ranker]:
    with _cache_lock:
        return dict(_cache)


def unload_cached() -> int:
    """Unload every cached ranker and empty the cache; returns how many were unloaded."""
    with _cache_lock:
        rankers = list(_cache.values())
        _cache.clear()
    for ranker in rankers:
        ranker.unload()
    return len(rankers)

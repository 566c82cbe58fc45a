"""Rankers score the N candidate anchor images for a prompt; the best one becomes the anchor.

``load_ranker("imagereward" | "clip" | "pickscore" | "none", path=None, device="cpu", dtype=None, offline=False)``
returns a ``Ranker``; ``load_ranker_with_fallback(...)`` also returns the label to record. Model code and
transformers are imported only when a model ranker loads; diffusers and the ``image-reward`` package never are."""
from __future__ import annotations

from .base import NoneRanker, Ranker, RankerLoadError
from .locate import WEBUI_MODELS_ENV
from .prompt import clean_prompt
from .registry import (
    DEFAULT_RANKER,
    FALLBACKS,
    available_rankers,
    cached_rankers,
    load_ranker,
    load_ranker_with_fallback,
    register_ranker,
    unload_cached,
)

__all__ = [
    "Ranker", "RankerLoadError", "NoneRanker", "clean_prompt", "load_ranker", "load_ranker_with_fallback",
    "unload_cached", "cached_rankers", "register_ranker", "available_rankers", "DEFAULT_RANKER", "FALLBACKS",
    "WEBUI_MODELS_ENV",
]

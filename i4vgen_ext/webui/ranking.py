"""The ranker for a job: loaded through ``i4vgen_ext.rankers.load_ranker_with_fallback``, kept between jobs when
the setting says so, and released after ranking otherwise (the UNet needs the memory back)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..core.settings import I4VGenSettings

Loader = Callable[..., Tuple[Any, str]]


def default_loader(*args: Any, **kwargs: Any) -> Tuple[Any, str]:
    from ..rankers import load_ranker_with_fallback

    return load_ranker_with_fallback(*args, **kwargs)


class RankerCache:
    """At most one loaded ranker, keyed by (name, path, fallback, device, models folder)."""

    def __init__(self, loader: Optional[Loader] = None):
        self.loader = loader
        self._key: Optional[tuple] = None
        self._ranker: Any = None
        self._label = "none"

    def get(self, settings: I4VGenSettings, *, device: Any, models_dir: Optional[str], offline: bool = False) -> Tuple[Any, str]:
        """(ranker or None, label). Raises the loader's ``RankerLoadError`` when the weights are missing and the
        fallback is 'error'; with fallback 'none' the loader hands back its none-ranker and a label saying why."""
        if settings.anchor_index >= 0:
            return None, "manual"
        if settings.ranker == "none":
            return None, "none"
        key = (settings.ranker, settings.ranker_path or None, settings.ranker_fallback, str(device), models_dir)
        if key != self._key:
            self.release()
            loader = self.loader or default_loader
            self._ranker, self._label = loader(
                settings.ranker, path=settings.ranker_path or None, fallback=settings.ranker_fallback,
                device=str(device), dtype=None, offline=offline, webui_models_dir=models_dir,
            )
            self._key = key
        return self._ranker, self._label

    def release(self) -> None:
        if self._ranker is not None:
            unload = getattr(self._ranker, "unload", None)
            if callable(unload):
                unload()
        self._key, self._ranker, self._label = None, None, "none"

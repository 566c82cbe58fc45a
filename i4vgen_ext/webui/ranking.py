"""The ranker for a job: loaded through ``i4vgen_ext.rankers.load_ranker_with_fallback``, kept between jobs when
the setting says so, and released after ranking otherwise (the UNet needs the memory back). A request's
``ranker_path`` names one folder inside the server's ranker folder, never a path.

Details: docs/webui-host.md §Ranker.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from ..core.settings import I4VGenSettings, SettingsError

Loader = Callable[..., Tuple[Any, str]]

RANKER_SUBFOLDER = "ImageReward"
RANKER_PATH_ALLOWED = (
    "empty (search the usual places), or the name of one folder inside the WebUI's ranker folder models/ImageReward/ "
    "(ImageReward/ inside Settings > I4VGen > Reward-model folder when that is set): letters, digits, spaces and "
    "._-+@=, no path separators, no '..', not an absolute path, and no link leading out of that folder"
)
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_. +@=-]{0,198}[A-Za-z0-9_+@=-])?")


def _refused(value: Any) -> SettingsError:
    shown = value if not isinstance(value, str) or len(value) <= 120 else value[:120] + "..."
    return SettingsError("ranker_path", shown, RANKER_PATH_ALLOWED)


def check_ranker_name(value: Any) -> str:
    """The folder name a request gave ('' for none), or the ``ranker_path`` SettingsError. Looks at the text only."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _refused(value)
    name = value.strip()
    if name and not _FOLDER_NAME.fullmatch(name):
        raise _refused(value)
    return name


def ranker_root(models_dir: Optional[str]) -> Optional[Path]:
    """The folder request-named ranker folders live in: ``<models>/ImageReward`` (None when the models folder is unknown)."""
    return Path(models_dir) / RANKER_SUBFOLDER if models_dir else None


def resolve_ranker_folder(value: Any, models_dir: Optional[str]) -> Optional[str]:
    """The real path of the folder a request named, checked (symlinks resolved) to lie inside the ranker folder;
    None for no name. Raises the same ``ranker_path`` SettingsError for every refusal, whatever exists on disk."""
    name = check_ranker_name(value)
    if not name:
        return None
    root = ranker_root(models_dir)
    if root is None:
        raise _refused(value)
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, name))
    try:
        inside = target != base and os.path.commonpath([base, target]) == base
    except ValueError:  # different drives (Windows)
        inside = False
    if not inside:
        raise _refused(value)
    return target


def default_loader(*args: Any, **kwargs: Any) -> Tuple[Any, str]:
    from ..rankers import load_ranker_with_fallback

    return load_ranker_with_fallback(*args, **kwargs)


class RankerCache:
    """At most one loaded ranker, keyed by (name, folder, fallback, device, models folder)."""

    def __init__(self, loader: Optional[Loader] = None):
        self.loader = loader
        self._key: Optional[tuple] = None
        self._ranker: Any = None
        self._label = "none"

    def get(self, settings: I4VGenSettings, *, device: Any, models_dir: Optional[str], offline: bool = False) -> Tuple[Any, str]:
        """(ranker or None, label). Raises the loader's ``RankerLoadError`` when the weights are missing and the
        fallback is 'error'; with fallback 'none' the loader hands back its none-ranker and a label saying why.
        ``settings.ranker_path`` is a folder name inside the ranker folder (``resolve_ranker_folder``); a
        ``SettingsError`` refuses anything else before a file is touched."""
        if settings.anchor_index >= 0:
            return None, "manual"
        if settings.ranker == "none":
            return None, "none"
        folder = resolve_ranker_folder(settings.ranker_path, models_dir)
        key = (settings.ranker, folder, settings.ranker_fallback, str(device), models_dir)
        if key != self._key:
            self.release()
            loader = self.loader or default_loader
            self._ranker, self._label = loader(
                settings.ranker, path=folder, fallback=settings.ranker_fallback,
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

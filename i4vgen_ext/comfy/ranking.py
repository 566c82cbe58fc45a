"""The ranker of a workflow: a kind (``core.settings.RANKERS``) and a file NAME that ComfyUI's ``folder_paths`` lists
under ``models/ImageReward`` (never a path), loaded through ``i4vgen_ext.rankers`` (safetensors or
``torch.load(weights_only=True)``: nothing a workflow names is unpickled)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from ..core.settings import FIELD_BY_NAME, RANKERS
from ..errors import SettingsError
from . import shim

FOLDER = "ImageReward"
AUTO = "(search the usual places)"
WEIGHT_EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors"}


@dataclass(frozen=True)
class RankerChoice:
    """What the ranker loader node outputs (ComfyUI type ``I4VGEN_RANKER``); ``ranker`` is None for 'none'."""

    kind: str
    ranker: Any
    label: str


def register_folder() -> None:
    """``models/ImageReward`` as a ComfyUI model folder (extra_model_paths.yaml may add more under that key)."""
    folder_paths = shim.folder_paths()
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if isinstance(extensions, set):
        extensions.update(WEIGHT_EXTENSIONS)


def file_choices() -> List[str]:
    """The names the loader offers: 'search' plus every weight file ComfyUI lists in its ImageReward folders."""
    try:
        names = shim.folder_paths().get_filename_list(FOLDER)
    except (shim.HostUnavailable, KeyError):
        names = []
    return [AUTO] + list(names)


def models_dir() -> Optional[str]:
    """ComfyUI's models folder: the rankers search ``<models>/ImageReward`` there when no file is named."""
    try:
        return shim.folder_paths().models_dir
    except shim.HostUnavailable:
        return None


def resolve(kind: str, name: str) -> Optional[str]:
    """The path the loader passes on for a listed file name (None: search). ImageReward takes its weights file,
    CLIP and PickScore the folder holding the named weights (with their config and tokenizer files)."""
    if kind not in RANKERS:
        raise SettingsError("ranker", kind, FIELD_BY_NAME["ranker"].allowed())
    if name in (None, "", AUTO):
        return None
    if name not in file_choices():
        raise SettingsError("ranker_file", name, f"one of the files ComfyUI lists in models/{FOLDER} "
                            f"(or '{AUTO}')")
    full = shim.folder_paths().get_full_path(FOLDER, name)
    if full is None:
        raise SettingsError("ranker_file", name, f"a file that still exists in models/{FOLDER}")
    return full if kind == "imagereward" else os.path.dirname(full)


def load(kind: str, name: str, fallback: str, *, device: str = "cpu",
         loader: Optional[Callable[..., Tuple[Any, str]]] = None) -> RankerChoice:
    """The ranker of ``kind`` from the named file, or (fallback 'none') the none-ranker with a label saying why."""
    if fallback not in FIELD_BY_NAME["ranker_fallback"].choices:
        raise SettingsError("ranker_fallback", fallback, FIELD_BY_NAME["ranker_fallback"].allowed())
    path = resolve(kind, name)
    if kind == "none":
        return RankerChoice("none", None, "none")
    if loader is None:
        from ..rankers import load_ranker_with_fallback as loader
    ranker, label = loader(kind, path=path, fallback=fallback, device=device, dtype=None, offline=True,
                           webui_models_dir=models_dir())
    if getattr(ranker, "name", kind) == "none":
        return RankerChoice(kind, None, label)
    return RankerChoice(kind, ranker, label)

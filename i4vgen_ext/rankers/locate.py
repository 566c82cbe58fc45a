"""Where a ranker's files are: local folders first, then the Hugging Face cache, then (online only) the hub.

Locations are read when a ranker loads, not at import, so ``HOME``, ``HF_HOME`` and the WebUI models dir can change
between runs (and tests can point them at temporary folders)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

log = logging.getLogger("i4vgen.rankers")

PathLike = Union[str, os.PathLike]
WEBUI_MODELS_ENV = "I4VGEN_WEBUI_MODELS_DIR"
_TRUE = {"1", "on", "yes", "true"}


def is_offline(offline: bool = False) -> bool:
    """Offline when asked to, or when the environment says so (the hub libraries would refuse anyway)."""
    return offline or any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The hub cache folder, resolved now from the same variables huggingface_hub reads at its import."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def webui_models_dir(explicit: Optional[PathLike] = None) -> Optional[Path]:
    """The WebUI's ``models`` folder: the argument, else ``$I4VGEN_WEBUI_MODELS_DIR``, else unknown."""
    value = explicit if explicit not in (None, "") else os.environ.get(WEBUI_MODELS_ENV)
    return Path(value).expanduser() if value else None


def has_files(folder: Path, required: Iterable[Union[str, Sequence[str]]]) -> bool:
    """Every entry present; an entry that is a tuple is satisfied by any one of its names."""
    for entry in required:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        if not any((folder / name).is_file() for name in names):
            return False
    return True


def hub_folder(
    repo_id: str,
    required: Sequence[Union[str, Sequence[str]]],
    optional: Sequence[str] = (),
    *,
    offline: bool,
) -> Tuple[Optional[Path], str]:
    """The snapshot folder of ``repo_id`` in the HF cache holding the required files; downloaded there when online.

    Returns (folder or None, what was tried). An entry that is a tuple lists alternatives in order of preference
    (``("model.safetensors", "pytorch_model.bin")``): a cached one wins, else the first the hub has."""
    cache = hf_cache_dir()
    where = f"Hugging Face cache {cache} (repo {repo_id})"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # no hub client: only local folders can be used
        return None, f"{where}: huggingface_hub is not installed"

    def cached(name: str) -> Optional[Path]:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None

    files: List[Path] = []
    missing: List[Sequence[str]] = []
    for entry in required:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        hit = next((p for p in map(cached, names) if p is not None), None)
        if hit is None:
            missing.append(names)
        else:
            files.append(hit)
    if missing and offline:
        return None, f"{where}: not there (offline, no download)"
    if missing:
        try:
            for names in missing:
                files.append(_download_first(repo_id, names, cache))
            for name in optional:
                if cached(name) is None:
                    _download_optional(repo_id, name, cache)
        except Exception as error:  # network, auth, disk: all end the search here
            return None, f"{where}: download failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    else:
        for name in optional:
            if cached(name) is None and not offline:
                _download_optional(repo_id, name, cache)
    folder = files[0].parent
    # Files of one revision share a snapshot folder; a mix of revisions would be a broken cache.
    if any(f.parent != folder for f in files):
        return None, f"{where}: files from different revisions ({', '.join(str(f) for f in files)})"
    return folder, where


def _download_first(repo_id: str, names: Sequence[str], cache: Path) -> Path:
    from huggingface_hub import hf_hub_download

    last: Optional[Exception] = None
    for name in names:
        try:
            log.info("downloading %s/%s into %s", repo_id, name, cache)
            return Path(hf_hub_download(repo_id, name, cache_dir=str(cache)))
        except Exception as error:  # the hub may lack this alternative; try the next
            last = error
            if type(error).__name__ not in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                raise
    assert last is not None
    raise last


def _download_optional(repo_id: str, name: str, cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, name, cache_dir=str(cache))
    except Exception as error:  # optional file: absent on the hub is fine
        log.debug("optional %s/%s not downloaded: %s", repo_id, name, error)


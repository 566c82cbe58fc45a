"""Read a single-file checkpoint (``.safetensors`` or a pickled ``.ckpt``/``.pt``/``.pth``) into a flat state dict.

Unreadable files (truncated, damaged, not a checkpoint at all) raise ``ModelFileError`` naming the file, never the
underlying library's exception; ``check_checkpoint`` runs the cheap part of those checks before any model work."""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import ModelFileError, UntrustedPickleError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# torch.save's legacy (pre-zip) format starts with its pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_TRUST_HINT = "--trust-pickle (library: trust_pickle=True)"

log = logging.getLogger("i4vgen")


def is_single_file(path: Path | str) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES


def read_checkpoint(path: Path | str, *, trust_pickle: bool = False, what: str = "checkpoint"
                    ) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint, on the CPU, unwrapped from Lightning's ``{"state_dict": ...}``.

    Pickles are opened with ``weights_only=True``. Lightning-era ``.ckpt`` files also pickle optimizer and callback
    objects, which that refuses; ``trust_pickle=True`` opens them fully, which runs whatever code the file names,
    so use it only for files from a source you trust (or convert them to .safetensors once). Each file opened that
    way is logged (logger ``i4vgen``, level WARNING). ``what`` names the file's role in error messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix.lower() == ".safetensors":
        data = _read_safetensors(path, what)
    else:
        data = _torch_load(path, trust_pickle=trust_pickle, what=what)
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFileError(f"{what} {path} does not hold a state dict (got {type(data).__name__})")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def check_checkpoint(path: Path | str, *, trust_pickle: bool = False, what: str = "checkpoint"
                     ) -> Optional[List[str]]:
    """Cheap checks of a single file before any model work; returns its tensor names when they came for free.

    ``.safetensors``: the header is parsed and checked against the file size (memory-mapped, nothing is read).
    Pickles: the format is sniffed; torch's zip format is also unpickled with memory-mapped storages, which finds
    damaged archives and untrusted pickles without reading the weights. Raises what ``read_checkpoint`` would."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except (OSError, MemoryError):
            raise
        except Exception as err:  # safetensors raises its own SafetensorError
            raise _unreadable(path, what, ".safetensors file", err) from None
    if _sniff_pickle(path, what) != "zip":
        return None
    data = _torch_load(path, trust_pickle=trust_pickle, what=what, mmap=True, skip_unsafe=True)
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return [k for k in data if isinstance(k, str)] if isinstance(data, dict) else None


def _read_safetensors(path: Path, what: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, MemoryError):
        raise
    except Exception as err:  # SafetensorError (not an OSError), or a header that does not parse
        raise _unreadable(path, what, ".safetensors file", err) from None


def _sniff_pickle(path: Path, what: str) -> str:
    """``"zip"`` (torch.save's format since 1.6) or ``"legacy"``; anything else is not a torch checkpoint."""
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path):
            return "zip"
        raise ModelFileError(f"{what} {path} is truncated or damaged: its zip directory is missing (a download "
                             f"that did not finish?); download it again")
    if head == _LEGACY_TORCH_MAGIC:
        return "legacy"
    raise ModelFileError(f"{what} {path} is not a PyTorch checkpoint (neither torch's zip format nor its legacy "
                         f"pickle): a damaged file, or another kind of file renamed?")


def _torch_load(path: Path, *, trust_pickle: bool, what: str, mmap: bool = False, skip_unsafe: bool = False):
    if not mmap:
        _sniff_pickle(path, what)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{what} {path} pickles Python objects besides tensors ({_offending_global(error)}a Lightning-era "
                f".ckpt?), so it was not loaded: unpickling it could run arbitrary code. If you trust its source, "
                f"allow it with {_TRUST_HINT}, or convert it to .safetensors once"
            ) from None
        if skip_unsafe:
            return None
    except (OSError, MemoryError):
        raise
    except Exception as err:  # torch reports damage as RuntimeError (PytorchStreamReader), IndexError, KeyError...
        if "allocate memory" in str(err):
            raise
        raise _unreadable(path, what, "PyTorch checkpoint", err) from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, MemoryError):
        raise
    except Exception as err:
        raise _unreadable(path, what, "PyTorch checkpoint", err) from None
    log.warning("i4vgen: %s: loaded %s with the full unpickler, not the safe weights-only loader", _TRUST_HINT, path)
    return data


def _offending_global(error: Exception) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"e.g. {match.group(1)}; " if match else ""


def _unreadable(path: Path, what: str, kind: str, err: Exception) -> ModelFileError:
    detail = " ".join(str(err).split())
    detail = detail.split(". ")[0][:200] or type(err).__name__
    return ModelFileError(f"{what} {path} is not a readable {kind} (truncated or damaged? download it again): "
                          f"{type(err).__name__}: {detail}")

"""Read a single-file checkpoint (``.safetensors`` or a pickled ``.ckpt``/``.pt``/``.pth``) into a flat state dict."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict

import torch

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class UntrustedPickleError(RuntimeError):
    """A pickled checkpoint that holds more than tensors, refused because loading it can run arbitrary code."""


def is_single_file(path: Path | str) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES


def read_checkpoint(path: Path | str, *, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint, on the CPU, unwrapped from Lightning's ``{"state_dict": ...}``.

    Pickles are opened with ``weights_only=True``. Lightning-era ``.ckpt`` files also pickle optimizer and callback
    objects, which that refuses; ``trust_pickle=True`` opens them fully, which runs whatever code the file names,
    so use it only for files from a source you trust (or convert them to .safetensors once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path), device="cpu")
    else:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if not trust_pickle:
                raise UntrustedPickleError(
                    f"{path.name} pickles Python objects besides tensors (a Lightning-era .ckpt?), so it was not "
                    f"loaded: unpickling it could run arbitrary code. If you trust its source, load it with "
                    f"trust_pickle=True (CLI: --trust-pickle), or convert it to .safetensors. Details: {error}"
                ) from error
            data = torch.load(str(path), map_location="cpu", weights_only=False)
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} does not hold a state dict (got {type(data).__name__})")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

"""Typed access to the ComfyUI modules I4VGen touches: ``comfy.sample``, ``comfy.samplers``,
``comfy.model_management``, ``comfy.utils`` and ``folder_paths``.

Every accessor imports lazily, so importing this file never needs the host; calling one outside ComfyUI raises
``HostUnavailable``. Tests put a stand-in ``comfy`` package on ``sys.path`` (tests/comfy/standin)."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class HostUnavailable(ImportError):
    pass


def module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise HostUnavailable(f"{name} is not importable: I4VGen's ComfyUI nodes run inside ComfyUI") from error


def sample() -> ModuleType:
    return module("comfy.sample")


def samplers() -> ModuleType:
    return module("comfy.samplers")


def model_management() -> ModuleType:
    return module("comfy.model_management")


def utils() -> ModuleType:
    return module("comfy.utils")


def folder_paths() -> ModuleType:
    return module("folder_paths")


def ksampler(function: Any) -> Any:
    """A ``comfy.samplers.KSAMPLER`` around a sampler function ``fn(model_k, x, sigmas, extra_args, callback,
    disable)``."""
    return samplers().KSAMPLER(function)


def check_interrupt() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` when the user pressed Cancel."""
    model_management().throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> Any:
    return utils().ProgressBar(total)

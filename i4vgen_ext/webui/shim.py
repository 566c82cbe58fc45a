"""Typed access to the WebUI's modules (the adetailer ``sd_webui`` idea, reduced to what I4VGen touches).

Every accessor imports lazily, so importing this file never needs the host; calling one outside the WebUI raises
``HostUnavailable``. Tests put a stand-in ``modules`` package on ``sys.path`` (tests/host/standin)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any, Optional

from ..errors import HostUnavailable


def module(name: str) -> ModuleType:
    """``modules.<name>`` of the running WebUI."""
    try:
        return importlib.import_module(f"modules.{name}")
    except ImportError as error:
        raise HostUnavailable(f"modules.{name} is not importable: I4VGen's WebUI code runs inside AUTOMATIC1111") from error


def shared() -> Any:
    return module("shared")


def state() -> Any:
    return module("shared").state


def opts() -> Any:
    return module("shared").opts


def processing() -> Any:
    return module("processing")


def sd_samplers() -> Any:
    return module("sd_samplers")


def rng() -> Any:
    return module("rng")


def devices() -> Any:
    return module("devices")


def interrupted_exception() -> type:
    return module("sd_samplers_common").InterruptedException


def loaded_extension_module(name: str) -> Optional[ModuleType]:
    """A module another extension loaded, e.g. ``scripts.animatediff_mm`` (A1111 extensions share the
    ``scripts.`` namespace, ``modules/script_loading.py``); None when that extension is absent or disabled."""
    return sys.modules.get(name)


def is_forge() -> bool:
    """SD WebUI Forge: ``modules_forge`` exists, or the model carries Forge's ``forge_objects``."""
    if "modules_forge" in sys.modules or importlib.util.find_spec("modules_forge") is not None:
        return True
    try:
        return hasattr(shared().sd_model, "forge_objects")
    except HostUnavailable:
        return False

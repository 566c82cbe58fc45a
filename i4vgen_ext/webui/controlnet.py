"""sd-webui-controlnet as a neighbour of an I4VGen job: finding its units, and leaving no hook of a refused job.

Details: docs/webui-host.md §ControlNet.
"""
from __future__ import annotations

import copy
import logging
import types
from typing import Any, Mapping, Optional

log = logging.getLogger("i4vgen")


def controlnet_script(p: Any) -> Optional[Any]:
    """sd-webui-controlnet's always-on script in this job's runner (title "ControlNet"), or None."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        try:
            if script.title() == "ControlNet":
                return script
        except Exception:
            continue
    return None


def controlnet_units_enabled(p: Any) -> bool:
    """Whether sd-webui-controlnet has an enabled unit in this job (its script's args are units: objects with
    ``enabled``, or dicts under the API)."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None) or ()
    if script is None:
        return False
    for unit in args[script.args_from:script.args_to]:
        enabled = unit.get("enabled") if isinstance(unit, Mapping) else getattr(unit, "enabled", False)
        if enabled:
            return True
    return False


def stand_down_controlnet(p: Any) -> None:
    """Switch this job's ControlNet units off (copies: the panel's own unit objects are not touched) when I4VGen
    has refused the job: the units' ``process`` then hooks nothing that the failed job would leave behind."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None)
    if script is None or args is None:
        return
    args = list(args)
    for index in range(script.args_from, min(script.args_to, len(args))):
        unit = args[index]
        if isinstance(unit, Mapping):
            args[index] = {**unit, "enabled": False}
        elif getattr(unit, "enabled", False):
            unit = copy.copy(unit)
            unit.enabled = False
            args[index] = unit
    p.script_args = args


def release_controlnet(p: Any) -> None:
    """Run ControlNet's ``postprocess`` for a job that I4VGen stops before sampling. ControlNet hooks the UNet in
    its ``process`` and undoes it only in ``postprocess``, which A1111 skips when a job raises; seen on a live
    WebUI: every later plain job differed until a ControlNet job ran to its end."""
    script = controlnet_script(p)
    if script is None:
        return
    finished = types.SimpleNamespace(images=[], extra_generation_params={}, infotexts=[], comments="")
    try:
        script.postprocess(p, finished, *p.script_args[script.args_from:script.args_to])
    except Exception as error:  # its cleanup failing must not hide the refusal
        log.warning(f"I4VGen: ControlNet's cleanup after the refusal failed: {error}")

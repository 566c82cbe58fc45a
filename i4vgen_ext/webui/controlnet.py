"""sd-webui-controlnet as a neighbour of an I4VGen job: finding its units, refusing by name the ones that are not
a plain hint, running inside its ``p.sample`` wrapper, and leaving no hook of a refused job.

Details (read against sd-webui-controlnet 1.1.455): docs/webui-host.md §ControlNet.
"""
from __future__ import annotations

import copy
import logging
import types
from typing import Any, Callable, List, Mapping, Optional, Tuple

from ..errors import Refusal
from . import shim

log = logging.getLogger("i4vgen")

# Preprocessor (``unit.module``) and model-name parts of units that are not a plain per-row hint, and why. Checked
# before ControlNet runs (``check_units``); the loaded models' types are checked again before the first UNet call
# (``control.check_params``), since ControlNet guesses a model's type from its weights, not its name.
NOT_A_HINT: Tuple[Tuple[str, str], ...] = (
    ("inpaint", "inpaint units build latents from the first call's batch and paste the control image back"),
    ("reference", "reference units inject attention and norm statistics recorded per call, not a per-row hint"),
    ("ip-adapter", "IP-Adapter caches image embeddings per attention layer"),
    ("ip_adapter", "IP-Adapter caches image embeddings per attention layer"),
    ("instant_id", "InstantID pairs an IP-Adapter unit with a ControlNet unit over shared embeddings"),
    ("instantid", "InstantID pairs an IP-Adapter unit with a ControlNet unit over shared embeddings"),
    ("revision", "revision replaces the SDXL pooled prompt embedding"),
    ("clip_vision", "CLIP-vision units are image embeddings, not a hint"),
    ("t2ia_style", "the T2I style adapter appends prompt tokens"),
    ("sparsectrl", "SparseCtrl carries its own motion layers and key-frame masks"),
    ("controllllite", "ControlLLLite hooks every attention layer with its own copy of the control image"),
    ("t2i-adapter", "T2I-Adapter units are not verified with I4VGen"),
    ("t2iadapter", "T2I-Adapter units are not verified with I4VGen"),
    ("coadapter", "T2I-CoAdapter units are not verified with I4VGen"),
)


def controlnet_script(p: Any) -> Optional[Any]:
    """sd-webui-controlnet's always-on script in this job's runner (title "ControlNet"), or None."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        try:
            if script.title() == "ControlNet":
                return script
        except Exception:
            continue
    return None


def unit_field(unit: Any, name: str, default: Any = None) -> Any:
    return unit.get(name, default) if isinstance(unit, Mapping) else getattr(unit, name, default)


def enabled_units(p: Any) -> List[Tuple[int, Any]]:
    """(unit number from 0, unit) for each enabled unit: an object from the panel or a dict from the API."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None) or ()
    if script is None:
        return []
    units = args[script.args_from:script.args_to]
    return [(i, unit) for i, unit in enumerate(units) if unit_field(unit, "enabled", False)]


def check_units(p: Any) -> None:
    """Refuse, by unit and by name, an enabled unit that is not a plain hint (the SDXL refiner is refused before, by
    ``refusals.check_job``). Touches nothing."""
    for index, unit in enabled_units(p):
        module, model = str(unit_field(unit, "module", "none") or "none"), str(unit_field(unit, "model", "") or "")
        for part, why in NOT_A_HINT:
            if part in module.lower() or part in model.lower():
                raise Refusal(f"I4VGen with ControlNet unit {index}: '{module}' / '{model or 'no model'}' is not "
                              f"supported: {why}. I4VGen runs plain-hint units (canny, depth, openpose, lineart, "
                              "softedge, scribble, tile, normal, seg, none). Turn the unit off or untick I4VGen.")
        if unit_field(unit, "effective_region_mask", None) is not None:
            raise Refusal(f"I4VGen with ControlNet unit {index}: an effective region mask is not supported. Remove "
                          "the mask or untick I4VGen.")


def adopt_api_units(p: Any) -> None:
    """Under the API, give ControlNet's dict units to AnimateDiff as ControlNet's own unit objects, as AnimateDiff
    means to (``animatediff_utils.py`` ``get_controlnet_units``: a unit without an image becomes a batch unit with
    the dict's ``batch_images``). AnimateDiff a88e889 writes them into ``p.script_args`` (a tuple under the API, so
    that fails) and returns the dicts, on which its ``set_p`` then fails: the job would run without AnimateDiff's
    ControlNet wiring, prompt schedule and context windows. Run from ``Script.setup``, before AnimateDiff's
    ``before_process``; the panel's units are objects already and are left alone."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None)
    if script is None or args is None or not getattr(p, "is_api", False):
        return
    units = list(args[script.args_from:script.args_to])
    if not any(isinstance(unit, Mapping) for unit in units):
        return
    external_code = shim.loaded_extension_module("scripts.external_code")
    if external_code is None or not hasattr(external_code, "get_all_units_in_processing"):
        return
    try:
        converted = external_code.get_all_units_in_processing(p)
    except Exception as error:  # ControlNet reports a bad unit itself when it runs
        log.warning(f"I4VGen: ControlNet's units could not be read: {error}")
        return
    if len(converted) != len(units):
        return
    for given, unit in zip(units, converted):
        if isinstance(given, Mapping) and unit.image is None:
            unit.input_mode = type(unit.input_mode).BATCH
            unit.batch_images = given.get("batch_images", None)
        elif isinstance(given, Mapping) and unit.batch_images is None:
            unit.batch_images = ""  # the panel's empty batch folder: ``set_p`` splits it for every enabled unit
    args = list(args)
    args[script.args_from:script.args_to] = converted
    p.script_args = args


def is_controlnet_sampler(p: Any) -> bool:
    """Whether ``p.sample`` is sd-webui-controlnet's wrapper (``hook.py`` ``UnetHook.hook`` sets
    ``p.sample_before_CN_hack = p.sample; p.sample = process_sample``)."""
    sample = vars(p).get("sample")
    return sample is not None and "sample_before_CN_hack" in vars(p) and \
        getattr(sample, "__qualname__", "").endswith("hook.<locals>.process_sample")


def control_params(p: Any) -> List[Any]:
    """The ``ControlParams`` ControlNet hooked for this job (``Script.latest_network.control_params``), or []."""
    script = controlnet_script(p)
    network = getattr(script, "latest_network", None) if script is not None else None
    return list(getattr(network, "control_params", None) or ())


def lend_sampler(p: Any, sampler: Callable[..., Any]) -> Callable[[], None]:
    """``sampler`` in the place of the sampling step that runs: inside ControlNet's wrapper when ControlNet hooked
    this job (it marks the prompts, then calls ``p.sample_before_CN_hack``), else as ``p.sample``. Returns the
    function that puts the previous one back."""
    name = "sample_before_CN_hack" if is_controlnet_sampler(p) else "sample"
    missing = object()
    previous = vars(p).get(name, missing)
    setattr(p, name, types.MethodType(sampler, p))

    def give_back() -> None:
        if previous is missing:
            vars(p).pop(name, None)
        else:
            setattr(p, name, previous)

    return give_back


def hand_back_sampler(p: Any) -> None:
    """At the job's end, the sampling step is the host's again: I4VGen's sampler, if a batch never called it, is
    taken out of ``p.sample`` or out of ControlNet's wrapper (whose own ``p.sample`` stays, as ControlNet leaves it)."""
    if not is_controlnet_sampler(p):
        vars(p).pop("sample", None)
    elif "install_sampler.<locals>" in getattr(vars(p)["sample_before_CN_hack"], "__qualname__", ""):
        p.sample_before_CN_hack = types.MethodType(type(p).sample, p)


def forget_marked_conds() -> None:
    """Drop A1111's cond caches, as ControlNet's own ``unmark_prompt_context`` does at every hooked UNet call: its
    ``process_sample`` marked the cached conds in place, so a job stopped before any UNet call would otherwise hand
    the next job conds with ControlNet's mark row in front."""
    processing = shim.processing()
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    txt2img = processing.StableDiffusionProcessingTxt2Img
    if hasattr(txt2img, "cached_hr_c"):
        txt2img.cached_hr_c, txt2img.cached_hr_uc = [None, None], [None, None]


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

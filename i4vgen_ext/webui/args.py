"""The script's arguments: positional UI values or one API dict, parsed into an ``I4VGenSettings`` request, every
value checked by the core's ``coerce``.

Details (UI order, API dict): docs/webui-host.md §Arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence

from ..core.evs import EVSSettings
from ..core.settings import (
    EXTRA_NAMES,
    FIELD_BY_NAME,
    METHOD_FIELDS,
    PRESETS,
    I4VGenSettings,
    SettingsError,
    mode_runs_evs,
    mode_runs_i4vgen,
    parse_method_args,
    to_bool,
)
from .anchor import decode_anchor_arg, describe_anchor
from .fields import WEBUI_MODES
from .ranking import check_ranker_name

HOST_KEYS = ("enable", "return_candidates")
_PASSED_ON = ("mode", "anchor_image")  # checked here: the WebUI's mode names, the image's own decoder
UI_ORDER = ("enable",) + METHOD_FIELDS + ("return_candidates",) + EXTRA_NAMES


@dataclass(frozen=True)
class ScriptArgs:
    enable: bool = False
    return_candidates: bool = False
    method: Dict[str, Any] = field(default_factory=dict)  # validated method knobs the request named
    mode: str = "i4vgen"
    anchor_image: Optional[Any] = None  # the user's anchor as 8-bit RGB (PIL), already checked
    anchor_label: str = ""  # its size and pixel hash, for the infotext
    anchor_sample: bool = False
    anchor_from_init: bool = False  # img2img: the init image is the anchor
    evs: EVSSettings = field(default_factory=EVSSettings)

    def extra_record(self) -> Dict[str, Any]:
        """The WebUI-only settings the run used, under their API names (for the infotext)."""
        record: Dict[str, Any] = {"mode": self.mode}
        if self.anchor_image is not None:
            record["anchor_image"] = self.anchor_label
            record["anchor_sample"] = self.anchor_sample
            if self.anchor_from_init:
                record["anchor_source"] = "img2img init image"
        if self.runs_evs:
            record.update(self.evs.to_fields())
        return record

    @property
    def core_mode(self) -> str:
        return WEBUI_MODES[self.mode]

    runs_i4vgen = property(lambda self: mode_runs_i4vgen(self.core_mode))
    runs_evs = property(lambda self: mode_runs_evs(self.core_mode))


def _from_mapping(values: Mapping[str, Any]) -> ScriptArgs:
    extras = {name: values[name] for name in EXTRA_NAMES if name in values}  # None: unset, as in the panel
    values = {k: v for k, v in values.items() if k not in extras or v is not None}
    named = tuple(n for n in EXTRA_NAMES if n not in _PASSED_ON)
    checked = parse_method_args(values, extra=HOST_KEYS + _PASSED_ON, names=METHOD_FIELDS + named)
    if "ranker_path" in checked:  # a folder name, never a server path (checked against the disk in job.prepare)
        checked["ranker_path"] = check_ranker_name(checked["ranker_path"])
    extras = {name: checked.pop(name) for name in EXTRA_NAMES if name in checked}
    mode = extras.pop("mode", "i4vgen")
    if not isinstance(mode, str) or mode not in WEBUI_MODES:
        raise SettingsError("mode", mode, "one of " + ", ".join(WEBUI_MODES))
    image = decode_anchor_arg(extras.pop("anchor_image", None))
    return ScriptArgs(
        enable=to_bool("enable", checked.pop("enable", False)),
        return_candidates=to_bool("return_candidates", checked.pop("return_candidates", False)),
        method=checked,
        mode=mode,
        anchor_image=image,
        anchor_label=describe_anchor(image) if image is not None else "",
        anchor_sample=extras.get("anchor_sample", False),
        evs=EVSSettings.from_fields(extras),
    )


def parse_script_args(args: Sequence[Any]) -> ScriptArgs:
    """``args`` is the script's slice of ``p.script_args``. A dict in the first slot is the API form; otherwise
    the values are positional in ``UI_ORDER`` (missing trailing values take defaults, ``None`` means unset)."""
    args = list(args)
    if args and isinstance(args[0], Mapping):
        return _from_mapping(args[0])
    if len(args) > len(UI_ORDER):
        raise SettingsError("args", args, f"at most {len(UI_ORDER)} positional values ({', '.join(UI_ORDER)})")
    named = {name: value for name, value in zip(UI_ORDER, args) if value is not None}
    return _from_mapping(named)


def is_enabled(args: Sequence[Any]) -> bool:
    """Cheap check used on every job: never raises, so a disabled script stays invisible."""
    if not args:
        return False
    first = args[0]
    if isinstance(first, Mapping):
        first = first.get("enable", False)
    return first is True or (isinstance(first, str) and first.lower() == "true")


def misshapen_args(args: Sequence[Any]) -> Optional[str]:
    """Why ``args`` cannot be the script's arguments (None when they can). A1111 copies
    ``alwayson_scripts.I4VGen.args`` into the script's slots item by item, so a string there (``"args": "enable"``)
    arrives as its characters; the first slot of a real request is a bool (panel, positional API) or a dict."""
    first = args[0] if args else None
    if isinstance(first, str) and first.strip().lower() not in ("true", "false"):
        return ("I4VGen: bad argument 'args': alwayson_scripts.I4VGen.args must be a list: [{\"enable\": true, ...}] "
                f"(a dict of settings) or the panel's positional values [true, ...]; got a string starting {first!r}")
    return None


def build_settings(
    request: ScriptArgs, *, prompt: str, negative_prompt: str, seed: int, frames: int, steps: int, guidance: float,
    default_preset: str = "official",
) -> I4VGenSettings:
    """The preset's method values, then what the request named, then the host's generation values (the host
    owns prompt, seed, frames, steps and CFG; the preset's own generation values never apply in the WebUI)."""
    method = dict(request.method)
    preset = method.pop("preset", default_preset)
    if preset not in PRESETS:
        raise SettingsError("preset", preset, FIELD_BY_NAME["preset"].allowed())
    return I4VGenSettings.from_preset(
        preset, **method, prompt=prompt, negative_prompt=negative_prompt, seed=int(seed) % 2**32,
        frames=frames, steps=steps, guidance=float(guidance), mode=request.core_mode,
        anchor_sample=request.anchor_sample, **request.evs.to_fields(),
    )

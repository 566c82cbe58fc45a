"""The script's arguments: positional UI values or one API dict, parsed into an ``I4VGenSettings`` request.

The UI order is ``enable``, the core's ``METHOD_FIELDS`` in order, ``return_candidates``, then the WebUI's own
``fields.EXTRA_NAMES`` (mode, anchor image, EVS settings), appended so older positional API calls still line up.
Under the API the first slot may instead hold a dict with any subset of those names (A1111 copies
``alwayson_scripts.I4VGen.args`` positionally and unconverted into ``p.script_args``, ``modules/api/api.py``
``Api.init_script_args``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence

from ..core.evs import EVSSettings
from ..core.settings import FIELD_BY_NAME, METHOD_FIELDS, PRESETS, I4VGenSettings, SettingsError, parse_method_args
from .anchor import decode_anchor_arg, describe_anchor
from .fields import EXTRA_BY_NAME, EXTRA_NAMES, as_bool, coerce_extra, evs_record, evs_settings
from .ranking import check_ranker_name

HOST_KEYS = ("enable", "return_candidates")
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
    evs: EVSSettings = field(default_factory=EVSSettings)

    @property
    def runs_i4vgen(self) -> bool:
        return self.mode.startswith("i4vgen")

    @property
    def runs_evs(self) -> bool:
        return self.mode.endswith("evs")

    def extra_record(self) -> Dict[str, Any]:
        """The WebUI-only settings the run used, under their API names (for the infotext)."""
        record: Dict[str, Any] = {"mode": self.mode}
        if self.anchor_image is not None:
            record["anchor_image"] = self.anchor_label
            record["anchor_sample"] = self.anchor_sample
        if self.runs_evs:
            record.update(evs_record(self.evs))
        return record


def _from_mapping(values: Mapping[str, Any]) -> ScriptArgs:
    checked = parse_method_args(values, extra=HOST_KEYS + EXTRA_NAMES)
    if "ranker_path" in checked:  # a folder name, never a server path (checked against the disk in job.prepare)
        checked["ranker_path"] = check_ranker_name(checked["ranker_path"])
    extras = {name: checked.pop(name) for name in EXTRA_NAMES if name in checked}
    image_arg = extras.pop("anchor_image", None)
    extras = {name: coerce_extra(name, value) for name, value in extras.items() if value is not None}
    image = decode_anchor_arg(image_arg)
    return ScriptArgs(
        enable=as_bool("enable", checked.pop("enable", False)),
        return_candidates=as_bool("return_candidates", checked.pop("return_candidates", False)),
        method=checked,
        mode=extras.get("mode", EXTRA_BY_NAME["mode"].default),
        anchor_image=image,
        anchor_label=describe_anchor(image) if image is not None else "",
        anchor_sample=extras.get("anchor_sample", False),
        evs=evs_settings(extras),
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
        frames=frames, steps=steps, guidance=float(guidance),
    )

"""The script's arguments: positional UI values or one API dict, parsed into an ``I4VGenSettings`` request.

The UI order is ``enable``, the core's ``METHOD_FIELDS`` in order, then ``return_candidates``. Under the API the
first slot may instead hold a dict with any subset of those names (A1111 copies ``alwayson_scripts.I4VGen.args``
positionally and unconverted into ``p.script_args``, ``modules/api/api.py`` ``Api.init_script_args``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence

from ..settings import FIELD_BY_NAME, METHOD_FIELDS, PRESETS, I4VGenSettings, SettingsError, parse_method_args

HOST_KEYS = ("enable", "return_candidates")
UI_ORDER = ("enable",) + METHOD_FIELDS + ("return_candidates",)


@dataclass(frozen=True)
class ScriptArgs:
    enable: bool = False
    return_candidates: bool = False
    method: Dict[str, Any] = field(default_factory=dict)  # validated method knobs the request named


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise SettingsError(name, value, "true or false")


def _from_mapping(values: Mapping[str, Any]) -> ScriptArgs:
    checked = parse_method_args(values, extra=HOST_KEYS)
    return ScriptArgs(
        enable=_as_bool("enable", checked.pop("enable", False)),
        return_candidates=_as_bool("return_candidates", checked.pop("return_candidates", False)),
        method=checked,
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

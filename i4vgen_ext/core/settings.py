"""One typed settings model for I4VGen: defaults, presets, validation, serialisation.

The CLI, the Python API, the WebUI panel, its API dict and its infotext are all driven by ``FIELDS`` below, so a
setting's name, default, range and help text live in exactly one place."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .schedule import ScheduleConfig

PRESETS: Dict[str, Dict[str, Any]] = {
    # The released code's values (xiefan-guo/i4vgen, AnimateDiff pipeline).
    "official": dict(
        frames=16, candidates=16, steps=25, guidance=7.5, negative_prompt="",
        nivsds_fraction=0.6, alpha_schedule="official", regen_strength=1.0,
    ),
    # The paper's stated values: identical except alpha = 1 at every NI-VSDS iteration.
    "paper": dict(
        frames=16, candidates=16, steps=25, guidance=7.5, negative_prompt="",
        nivsds_fraction=0.6, alpha_schedule="paper", regen_strength=1.0,
    ),
}
RANKERS = ("imagereward", "clip", "pickscore", "none")
FALLBACKS = ("error", "none")
OFFICIAL_ALPHAS = (10.0, 10.0, 10.0)


class SettingsError(ValueError):
    """A setting is out of range. The message names the setting, the value and what is allowed."""

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name} = {value!r} is not allowed: expected {allowed}")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: type
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    method: bool = False  # an I4VGen knob (WebUI panel / API dict / infotext), not a generation setting

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if self.kind is int else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{kind} >= {self.minimum:g}"
        return kind if self.kind in (int, float) else "text"


FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("prompt", str, "What the video shows."),
    FieldSpec("negative_prompt", str, "What it should not show (CFG's unconditional prompt)."),
    FieldSpec("seed", int, "Seed of the one CPU generator every noise comes from; -1 picks one at random.", -1, 2**32 - 1),
    FieldSpec("width", int, "Video width in pixels, a multiple of 8 (default: the model's size).", 64, 2048),
    FieldSpec("height", int, "Video height in pixels, a multiple of 8 (default: the model's size).", 64, 2048),
    FieldSpec("frames", int, "Frames F of the video.", 1, 128),
    FieldSpec("steps", int, "Sampling steps S, shared by all stages.", 1, 1000),
    FieldSpec("guidance", float, "Classifier-free guidance scale (<= 1 runs the conditional pass only).", 0, 50),
    FieldSpec("preset", str, "Base values: 'official' = the released code, 'paper' = the paper (alpha 1).",
              choices=tuple(PRESETS), method=True),
    FieldSpec("candidates", int, "Candidate anchor images N generated and ranked (independent of frames).", 1, 64,
              method=True),
    FieldSpec("nivsds_fraction", float,
              "Share of the schedule NI-VSDS runs from the noisy end: K = int(S*p)+1 iterations. "
              "Equals 1 - p of the paper (paper p = 0.4 -> 0.6).", 0, 1, method=True),
    FieldSpec("alpha_schedule", str,
              "NI-VSDS step sizes: 'official' = 10,10,10 then 1; 'paper' = 1 throughout; or a list 'a,b,c' "
              "(positive numbers, continued with 1).", method=True),
    FieldSpec("regen_strength", float,
              "Regeneration strength p_re: re-noise to timesteps[S - int(S*p_re)] and denoise; 0 keeps the "
              "NI-VSDS video.", 0, 1, method=True),
    FieldSpec("ranker", str, "Model that scores the candidates; 'none' keeps candidate 0.", choices=RANKERS,
              method=True),
    FieldSpec("ranker_path", str, "Folder holding the ranker's files (empty: search the usual places).",
              method=True),
    FieldSpec("ranker_fallback", str, "If the ranker cannot load: 'error' stops, 'none' falls back to candidate 0.",
              choices=FALLBACKS, method=True),
    FieldSpec("anchor_index", int, "Use this candidate as the anchor instead of ranking (-1: use the ranker).", -1, 63,
              method=True),
)
FIELD_BY_NAME: Dict[str, FieldSpec] = {f.name: f for f in FIELDS}
METHOD_FIELDS: Tuple[str, ...] = tuple(f.name for f in FIELDS if f.method)


@dataclass(frozen=True)
class I4VGenSettings:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    width: Optional[int] = None
    height: Optional[int] = None
    frames: int = 16
    steps: int = 25
    guidance: float = 7.5
    preset: str = "official"
    candidates: int = 16
    nivsds_fraction: float = 0.6
    alpha_schedule: str = "official"
    regen_strength: float = 1.0
    ranker: str = "imagereward"
    ranker_path: str = ""
    ranker_fallback: str = "error"
    anchor_index: int = -1
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_preset(cls, preset: str = "official", **overrides: Any) -> "I4VGenSettings":
        """The preset's values, then every override that is not None."""
        if preset not in PRESETS:
            raise SettingsError("preset", preset, FIELD_BY_NAME["preset"].allowed())
        unknown = sorted(set(overrides) - set(FIELD_BY_NAME) - {"schedule"})
        if unknown:
            raise SettingsError(unknown[0], overrides[unknown[0]], "a known setting: " + ", ".join(FIELD_BY_NAME))
        values = dict(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: coerce(k, v) for k, v in values.items()})

    # Derived quantities -------------------------------------------------------------------------------------
    @property
    def nivsds_iterations(self) -> int:
        """K = int(S * p) + 1, capped at S (the official slice ``timesteps[:K]`` never exceeds S)."""
        return min(int(self.steps * self.nivsds_fraction) + 1, self.steps)

    @property
    def regen_steps(self) -> int:
        """n_re = min(int(S * p_re), S)."""
        return min(int(self.steps * self.regen_strength), self.steps)

    def alphas(self) -> List[float]:
        return alpha_list(self.alpha_schedule, self.nivsds_iterations)

    def replace(self, **changes: Any) -> "I4VGenSettings":
        return dataclasses.replace(self, **{k: coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in FIELDS}
        out["schedule"] = self.schedule.to_dict()
        return out

    def method_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in METHOD_FIELDS}


def coerce(name: str, value: Any) -> Any:
    """Turn CLI/API/infotext values into the field's type, or raise the named error."""
    if name == "schedule":
        return value if isinstance(value, ScheduleConfig) else ScheduleConfig(**value)
    spec = FIELD_BY_NAME.get(name)
    if spec is None:
        raise SettingsError(name, value, "a known setting: " + ", ".join(FIELD_BY_NAME))
    if value is None and name in ("width", "height"):
        return None
    try:
        if spec.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if spec.kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if name == "alpha_schedule" and isinstance(value, (list, tuple)):
            return ",".join(f"{float(v):g}" for v in value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise SettingsError(name, value, spec.allowed()) from None


def _check_range(spec: FieldSpec, value: Any) -> None:
    if value is None:
        return
    if spec.choices and value not in spec.choices:
        raise SettingsError(spec.name, value, spec.allowed())
    if spec.kind in (int, float):
        if value != value or (spec.minimum is not None and value < spec.minimum) or (
            spec.maximum is not None and value > spec.maximum
        ):
            raise SettingsError(spec.name, value, spec.allowed())


def validate(s: I4VGenSettings) -> None:
    for spec in FIELDS:
        value = getattr(s, spec.name)
        if spec.kind is str and not isinstance(value, str):
            raise SettingsError(spec.name, value, spec.allowed())
        if spec.kind in (int, float) and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SettingsError(spec.name, value, spec.allowed())
        _check_range(spec, value)
    for name in ("width", "height"):
        value = getattr(s, name)
        if value is not None and value % 8:
            raise SettingsError(name, value, "a multiple of 8 in [64, 2048]")
    if s.anchor_index >= s.candidates:
        raise SettingsError("anchor_index", s.anchor_index, f"-1 or an integer in [0, {s.candidates - 1}] (candidates = {s.candidates})")
    alpha_list(s.alpha_schedule, 1)


def alpha_list(schedule: str, iterations: int) -> List[float]:
    """Step size per NI-VSDS iteration. 'official' is the released code's hard-coded list (10 for the first three
    iterations, then 1); an explicit list is continued with 1, as the official list is."""
    if schedule == "official":
        given: Sequence[float] = OFFICIAL_ALPHAS
    elif schedule == "paper":
        given = ()
    else:
        try:
            given = [float(v) for v in schedule.split(",") if v.strip()]
        except ValueError:
            given = []
        if not given or any(not (v > 0) or v == float("inf") for v in given):
            raise SettingsError("alpha_schedule", schedule, "'official', 'paper' or a comma-separated list of positive numbers")
    values = list(given[:iterations])
    return values + [1.0] * (iterations - len(values))


def parse_method_args(args: Union[Mapping[str, Any], Sequence[Any]], *, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Check an API-style dict of I4VGen knobs: unknown keys and bad values raise a ``SettingsError`` naming the key.
    ``extra`` names host-only keys (such as ``enable``) that pass through untouched."""
    if not isinstance(args, Mapping):
        raise SettingsError("args", args, "a dict of I4VGen settings")
    out: Dict[str, Any] = {}
    for key, value in args.items():
        if key in extra:
            out[key] = value
            continue
        if key not in METHOD_FIELDS:
            raise SettingsError(key, value, "a known key: " + ", ".join(tuple(extra) + METHOD_FIELDS))
        spec = FIELD_BY_NAME[key]
        value = coerce(key, value)
        _check_range(spec, value)
        if key == "alpha_schedule":
            alpha_list(value, 1)
        out[key] = value
    return out


def settings_json(s: I4VGenSettings) -> str:
    return json.dumps(s.to_dict(), sort_keys=True)

"""One typed settings model for I4VGen: every setting's name, kind, default, range and help, presets, validation.

``FIELDS`` is the one table: the CLI's flags, the WebUI panel's controls, the API dict, validation and the
infotext are generated from it (the WebUI adds only presentation: labels, slider steps, grouping)."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import SettingsError
from .schedule import ScheduleConfig, sampling_timesteps

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
# What makes the video, then whether EVS refines it: plain AnimateDiff or I4VGen (or the user's anchor image).
MODES = ("i4vgen", "plain", "i4vgen+evs", "plain+evs")
OFFICIAL_ALPHAS = (10.0, 10.0, 10.0)
SEED_MAX = 2**32 - 1
SFI_LAYER_PRESETS = ("deep", "shallow", "all")
SFI_LAYERS_ALLOWED = ('"deep" (mid block + lowest-resolution blocks), "shallow" (highest-resolution blocks), "all", '
                      'or a comma list of UNet module-name prefixes: diffusers names such as "mid_block,up_blocks.1" '
                      'in the CLI, ldm names such as "middle_block,output_blocks.3" in the WebUI')
_MODULE_PREFIX = re.compile(r"^[A-Za-z_]\w*(?:\.\w+)*$")


class IMAGE:
    """Kind of the anchor image: a file (CLI), a PIL image (panel) or base64 (API); decoded by the entry point."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Any  # str, int, float, bool or IMAGE
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    # generation: the host owns it in the WebUI; method: an I4VGen knob; mode / anchor / evs: what runs
    group: str = "method"
    open_minimum: bool = False  # the minimum itself is not allowed
    allowed_text: str = ""  # what is allowed, where the kind and range do not say it

    @property
    def method(self) -> bool:
        return self.group == "method"

    def allowed(self) -> str:
        if self.allowed_text:
            return self.allowed_text
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        kind = "an integer" if self.kind is int else "a number"
        if self.minimum is not None and self.maximum is not None:
            low = "(" if self.open_minimum else "["
            return f"{kind} in {low}{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{kind} {'>' if self.open_minimum else '>='} {self.minimum:g}"
        return kind if self.kind in (int, float) else "text"


FIELDS: Tuple[FieldSpec, ...] = (
    FieldSpec("prompt", str, "", "What the video shows.", group="generation"),
    FieldSpec("negative_prompt", str, "", "What it should not show (CFG's unconditional prompt).", group="generation"),
    FieldSpec("seed", int, 0, "Seed of the one CPU generator every noise comes from; -1 picks one at random.", -1,
              SEED_MAX, group="generation", allowed_text=f"an integer in [-1, {SEED_MAX}]"),
    FieldSpec("width", int, None, "Video width in pixels, a multiple of 8 (default: the model's size).", 64, 2048,
              group="generation"),
    FieldSpec("height", int, None, "Video height in pixels, a multiple of 8 (default: the model's size).", 64, 2048,
              group="generation"),
    FieldSpec("frames", int, 16, "Frames F of the video.", 1, 128, group="generation"),
    FieldSpec("steps", int, 25, "Sampling steps S, shared by all stages.", 1, 999, group="generation"),
    FieldSpec("guidance", float, 7.5, "Classifier-free guidance scale (<= 1 runs the conditional pass only).", 0, 50,
              group="generation"),
    FieldSpec("preset", str, "official", "Base values: 'official' = the released code, 'paper' = the paper (alpha 1).",
              choices=tuple(PRESETS)),
    FieldSpec("candidates", int, 16, "Candidate anchor images N generated and ranked (independent of frames).", 1, 64),
    FieldSpec("nivsds_fraction", float, 0.6,
              "Share of the schedule NI-VSDS runs from the noisy end: K = int(S*p)+1 iterations. "
              "Equals 1 - p of the paper (paper p = 0.4 -> 0.6).", 0, 1),
    FieldSpec("alpha_schedule", str, "official",
              "NI-VSDS step sizes: 'official' = 10,10,10 then 1; 'paper' = 1 throughout; or a list 'a,b,c' "
              "(positive numbers, continued with 1).",
              allowed_text="'official', 'paper' or a comma-separated list of positive numbers"),
    FieldSpec("regen_strength", float, 1.0,
              "Regeneration strength p_re: re-noise to timesteps[S - int(S*p_re)] and denoise; 0 keeps the "
              "NI-VSDS video.", 0, 1),
    FieldSpec("ranker", str, "imagereward", "Model that scores the candidates; 'none' keeps candidate 0.",
              choices=RANKERS),
    FieldSpec("ranker_path", str, "", "Folder holding the ranker's files (empty: search the usual places)."),
    FieldSpec("ranker_fallback", str, "error",
              "If the ranker cannot load: 'error' stops, 'none' falls back to candidate 0.", choices=FALLBACKS),
    FieldSpec("anchor_index", int, -1, "Use this candidate as the anchor instead of ranking (-1: use the ranker).",
              -1, 63),
    FieldSpec("mode", str, "i4vgen",
              "i4vgen: I4VGen; plain: plain AnimateDiff; '+evs': then EVS refinement of the video "
              "(T2I + [T2V] + T2I).", choices=MODES, group="mode"),
    FieldSpec("anchor_image", IMAGE, None,
              "Use this image as the anchor: no candidates, no ranker; resized and centre-cropped to the video "
              "size, VAE-encoded (paper section 4.5).", group="anchor"),
    FieldSpec("anchor_sample", bool, False,
              "Encode the anchor image with a VAE posterior sample (seeded) instead of its mean.", group="anchor"),
    # EVS: the EVS authors' code is not public, so these defaults are ours (docs/evs.md §Defaults).
    FieldSpec("evs_strength", float, 0.4, "s_I: SDEdit strength of the image-mode pass: int(S * s_I) T2I steps.",
              0, 1, group="evs", open_minimum=True),
    FieldSpec("evs_t2v_step", int, -1,
              "T2I step (1-based) whose x0 prediction enters the video block; -1: the middle one; 0: no block "
              "(plain SDEdit in image mode).", -1, group="evs",
              allowed_text="-1 (middle), 0 (no block) or a T2I step number >= 1"),
    FieldSpec("evs_video_strength", float, 0.3,
              "s_V: noise level the video block starts from: t_V = timesteps[S - int(S * s_V)].", 0, 1,
              group="evs", open_minimum=True),
    FieldSpec("evs_video_steps", int, -1, "n_V: video steps in the block, 0..int(S * s_V); -1: min(4, int(S * s_V)).",
              -1, group="evs", allowed_text="-1 (auto) or an integer >= 0"),
    FieldSpec("evs_fresh_bridge_noise", bool, True,
              "Re-noise into and out of the video block with fresh draws (off: reuse the SDEdit noise).", group="evs"),
    FieldSpec("evs_inversion", bool, False,
              "Reach t_V by DDIM inversion with the video model (no CFG, extra calls) instead of SDEdit noising.",
              group="evs"),
    FieldSpec("evs_sfi", bool, False,
              "Selective Feature Injection (needs evs_inversion): the video steps attend, in the chosen layers, with "
              "the inversion's spatial self-attention K, V and the query gamma*Q_inv + (1-gamma)*Q (EVS Eq. 11). "
              "No extra UNet calls.", group="evs"),
    FieldSpec("evs_sfi_gamma", float, 0.8,
              "SFI query mix gamma: 1 = the inversion's query; the paper's points: 0.8 deep, 0.5 shallow.", 0, 1,
              group="evs"),
    FieldSpec("evs_sfi_layers", str, "deep",
              "SFI layers: deep (mid block + lowest-resolution blocks), shallow (highest-resolution blocks), all, "
              "or a comma list of UNet module-name prefixes.", group="evs", allowed_text=SFI_LAYERS_ALLOWED),
)
FIELD_BY_NAME: Dict[str, FieldSpec] = {f.name: f for f in FIELDS}
METHOD_FIELDS: Tuple[str, ...] = tuple(f.name for f in FIELDS if f.group == "method")
EXTRA_NAMES: Tuple[str, ...] = tuple(f.name for f in FIELDS if f.group in ("mode", "anchor", "evs"))
EVS_NAMES: Tuple[str, ...] = tuple(f.name for f in FIELDS if f.group == "evs")
DEFAULTS: Dict[str, Any] = {f.name: f.default for f in FIELDS}
# The settings a run keeps (the anchor image is an input, decoded by the entry point, not a setting).
_SETTING_NAMES = tuple(f.name for f in FIELDS if f.kind is not IMAGE)


def mode_runs_i4vgen(mode: str) -> bool:
    """Whether the mode's video is I4VGen's (else plain AnimateDiff's)."""
    return mode.startswith("i4vgen")


def mode_runs_evs(mode: str) -> bool:
    """Whether EVS refines the mode's video."""
    return mode.endswith("+evs")


def parse_sfi_layers(text: str) -> Union[str, Tuple[str, ...]]:
    """A layer selection: one of ``SFI_LAYER_PRESETS``, or the tuple of module-name prefixes of a comma list."""
    if not isinstance(text, str):
        raise ValueError(f"a layer selection is a string, got {text!r}")
    if text.strip() in SFI_LAYER_PRESETS:
        return text.strip()
    prefixes = tuple(p.strip() for p in text.split(","))
    if not all(_MODULE_PREFIX.match(p) for p in prefixes):
        raise ValueError(f"not a layer selection: {text!r}")
    return prefixes


def coerce(name: str, value: Any) -> Any:
    """A CLI/API/panel/infotext value in its field's type, range-checked, or the named ``SettingsError``. The one
    conversion every entry point uses."""
    if name == "schedule":
        return coerce_schedule(value)
    spec = FIELD_BY_NAME.get(name)
    if spec is None:
        raise SettingsError(name, value, "a known setting: " + ", ".join(FIELD_BY_NAME))
    if spec.kind is IMAGE or (value is None and spec.default is None):
        return value
    value = _convert(spec, value)
    check(spec, value)
    return value


_SCHEDULE_ALLOWED = ("a mapping of num_train_timesteps (int in [2, 10000]), beta_start < beta_end (floats in (0, 1)), "
                     "beta_schedule (linear | scaled_linear), steps_offset (int in [0, num_train_timesteps - 1]), "
                     "clip_sample and set_alpha_to_one (bool), timestep_spacing (leading | trailing)")


def coerce_schedule(value: Any) -> ScheduleConfig:
    """The DDIM schedule of a run (from a run.json or the Python API), every field typed and in range."""
    if isinstance(value, ScheduleConfig):
        value = value.to_dict()
    if not isinstance(value, Mapping) or not set(value) <= set(ScheduleConfig.__dataclass_fields__):
        raise SettingsError("schedule", value, _SCHEDULE_ALLOWED)
    merged = dict(ScheduleConfig().to_dict(), **value)
    kinds = {name: type(default) for name, default in ScheduleConfig().to_dict().items()}
    for name, kind in kinds.items():
        item = merged[name]
        ok = isinstance(item, kind) and (kind is bool or not isinstance(item, bool))
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            merged[name], ok = float(item), True
        if not ok:
            raise SettingsError("schedule", value, _SCHEDULE_ALLOWED)
    t = merged["num_train_timesteps"]
    if not (2 <= t <= 10000 and 0 <= merged["steps_offset"] < t
            and 0 < merged["beta_start"] < merged["beta_end"] < 1
            and merged["beta_schedule"] in ("linear", "scaled_linear")
            and merged["timestep_spacing"] in ("leading", "trailing")):
        raise SettingsError("schedule", value, _SCHEDULE_ALLOWED)
    return ScheduleConfig(**merged)


def to_bool(name: str, value: Any) -> bool:
    """A yes/no value that is no setting of the table (the WebUI's ``enable``), converted the table's way."""
    return _convert(FieldSpec(name, bool, False, ""), value)


def _convert(spec: FieldSpec, value: Any) -> Any:
    try:
        if spec.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if spec.kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                number = float(value.strip())
                if not number.is_integer():
                    raise ValueError
                return int(number)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if spec.kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if spec.name == "alpha_schedule" and isinstance(value, (list, tuple)):
            return ",".join(f"{float(v):g}" for v in value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(spec.name, value, spec.allowed()) from None


def check(spec: FieldSpec, value: Any) -> None:
    """The range, choices and format of one value already in its field's type."""
    if value is None and spec.default is None:
        return
    if spec.choices and value not in spec.choices:
        raise SettingsError(spec.name, value, spec.allowed())
    if spec.kind in (int, float) and not isinstance(value, bool):
        low_ok = spec.minimum is None or (value > spec.minimum if spec.open_minimum else value >= spec.minimum)
        if not math.isfinite(value) or not low_ok or (spec.maximum is not None and value > spec.maximum):
            raise SettingsError(spec.name, value, spec.allowed())
    if spec.name == "alpha_schedule":
        alpha_list(value, 1)
    elif spec.name == "evs_sfi_layers":
        try:
            parse_sfi_layers(value)
        except ValueError:
            raise SettingsError(spec.name, value, spec.allowed()) from None


def _default(name: str) -> Any:
    return field(default=DEFAULTS[name])


@dataclass(frozen=True)
class I4VGenSettings:
    prompt: str = _default("prompt")
    negative_prompt: str = _default("negative_prompt")
    seed: int = _default("seed")
    width: Optional[int] = _default("width")
    height: Optional[int] = _default("height")
    frames: int = _default("frames")
    steps: int = _default("steps")
    guidance: float = _default("guidance")
    preset: str = _default("preset")
    candidates: int = _default("candidates")
    nivsds_fraction: float = _default("nivsds_fraction")
    alpha_schedule: str = _default("alpha_schedule")
    regen_strength: float = _default("regen_strength")
    ranker: str = _default("ranker")
    ranker_path: str = _default("ranker_path")
    ranker_fallback: str = _default("ranker_fallback")
    anchor_index: int = _default("anchor_index")
    mode: str = _default("mode")
    anchor_sample: bool = _default("anchor_sample")
    evs_strength: float = _default("evs_strength")
    evs_t2v_step: int = _default("evs_t2v_step")
    evs_video_strength: float = _default("evs_video_strength")
    evs_video_steps: int = _default("evs_video_steps")
    evs_fresh_bridge_noise: bool = _default("evs_fresh_bridge_noise")
    evs_inversion: bool = _default("evs_inversion")
    evs_sfi: bool = _default("evs_sfi")
    evs_sfi_gamma: float = _default("evs_sfi_gamma")
    evs_sfi_layers: str = _default("evs_sfi_layers")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_preset(cls, preset: str = "official", **overrides: Any) -> "I4VGenSettings":
        """The preset's values, then every override that is not None."""
        if preset not in PRESETS:
            raise SettingsError("preset", preset, FIELD_BY_NAME["preset"].allowed())
        unknown = sorted(set(overrides) - set(_SETTING_NAMES) - {"schedule"})
        if unknown:
            raise SettingsError(unknown[0], overrides[unknown[0]], "a known setting: " + ", ".join(_SETTING_NAMES))
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

    runs_i4vgen = property(lambda self: mode_runs_i4vgen(self.mode))
    runs_evs = property(lambda self: mode_runs_evs(self.mode))

    def alphas(self) -> List[float]:
        return alpha_list(self.alpha_schedule, self.nivsds_iterations)

    def evs(self):
        """The EVS settings (``core.evs.EVSSettings``) these fields describe."""
        from .evs import EVSSettings

        return EVSSettings.from_fields({name: getattr(self, name) for name in EVS_NAMES})

    def replace(self, **changes: Any) -> "I4VGenSettings":
        return dataclasses.replace(self, **{k: coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> Dict[str, Any]:
        out = {name: getattr(self, name) for name in _SETTING_NAMES}
        out["schedule"] = self.schedule.to_dict()
        return out

    def method_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in METHOD_FIELDS}


def validate(s: I4VGenSettings) -> None:
    for name in _SETTING_NAMES:
        spec, value = FIELD_BY_NAME[name], getattr(s, name)
        if value is None and spec.default is None:
            continue
        kinds = (int, float) if spec.kind is float else (spec.kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and spec.kind is not bool):
            raise SettingsError(name, value, spec.allowed())
        check(spec, value)
    for name in ("width", "height"):
        value = getattr(s, name)
        if value is not None and value % 8:
            raise SettingsError(name, value, "a multiple of 8 in [64, 2048]")
    if not isinstance(s.schedule, ScheduleConfig):
        raise SettingsError("schedule", s.schedule, _SCHEDULE_ALLOWED)
    if max(sampling_timesteps(s.steps, s.schedule)) >= s.schedule.num_train_timesteps:
        raise SettingsError("steps", s.steps, "fewer steps: with this schedule's steps_offset the first timestep "
                            f"passes {s.schedule.num_train_timesteps - 1}")
    if s.anchor_index >= s.candidates:
        raise SettingsError("anchor_index", s.anchor_index,
                            f"-1 or an integer in [0, {s.candidates - 1}] (candidates = {s.candidates})")


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
            raise SettingsError("alpha_schedule", schedule, FIELD_BY_NAME["alpha_schedule"].allowed())
    values = list(given[:iterations])
    return values + [1.0] * (iterations - len(values))


def parse_method_args(args: Union[Mapping[str, Any], Sequence[Any]], *, extra: Sequence[str] = (),
                      names: Sequence[str] = METHOD_FIELDS) -> Dict[str, Any]:
    """Check an API-style dict of settings: unknown keys and bad values raise a ``SettingsError`` naming the key.
    ``names`` are the settings the caller accepts; ``extra`` names host-only keys (such as ``enable``) that pass
    through untouched."""
    if not isinstance(args, Mapping):
        raise SettingsError("args", args, "a dict of I4VGen settings")
    out: Dict[str, Any] = {}
    for key, value in args.items():
        if key in extra:
            out[key] = value
        elif key in names:
            out[key] = coerce(key, value)
        else:
            raise SettingsError(key, value, "a known key: " + ", ".join(tuple(extra) + tuple(names)))
    return out

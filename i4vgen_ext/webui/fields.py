"""The WebUI's own arguments after the core's method knobs: the mode, the user anchor image and the EVS settings.

One table drives the panel's controls, the API dict keys, validation and the infotext, as ``settings.FIELDS`` does
for the I4VGen knobs. The EVS defaults are ``EVSSettings()``'s (documented in ``i4vgen_ext/evs.py``: ours, the
EVS authors' code is not public)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..core.evs import EVSSettings, parse_sfi_layers
from ..core.settings import SettingsError

MODES = ("i4vgen", "i4vgen+evs", "evs")


class IMAGE:
    """Kind of the anchor image field: a PIL image (panel) or a base64 string (API), decoded by ``anchor``."""

_EVS = EVSSettings()
SFI_LAYERS_ALLOWED = ('"deep", "shallow", "all", or a comma list of ldm module-name prefixes (input_blocks.N, '
                      'middle_block, output_blocks.N), e.g. "middle_block,output_blocks.3"')


@dataclass(frozen=True)
class WebUIField:
    name: str
    kind: Any  # bool, int, float, str (choices: a radio; none: free text) or IMAGE
    default: Any
    label: str
    help: str
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None  # panel range; EVSSettings checks the real one
    maximum: Optional[float] = None
    step: float = 0.01
    evs: Optional[str] = None  # the EVSSettings attribute this field sets


EXTRA_FIELDS: Tuple[WebUIField, ...] = (
    WebUIField("mode", str, "i4vgen", "Mode",
               "i4vgen: I4VGen. i4vgen+evs: I4VGen, then EVS refinement of its video. evs: AnimateDiff's own "
               "video, then EVS refinement (EVS refine after generation).", choices=MODES),
    WebUIField("anchor_image", IMAGE, None, "Anchor image (optional)",
               "Use this image as the anchor: no candidates, no ranker; resized and centre-cropped to the video "
               "size, VAE-encoded. API: base64 (a data: URL prefix is allowed)."),
    WebUIField("anchor_sample", bool, False, "Sample the VAE posterior",
               "Encode the anchor image with a posterior sample (seeded by the batch seed) instead of its mean."),
    WebUIField("evs_strength", float, _EVS.strength, "EVS strength s_I",
               "SDEdit strength of the image-mode pass: int(S * s_I) T2I steps.", minimum=0.01, maximum=1.0,
               evs="strength"),
    WebUIField("evs_t2v_step", int, _EVS.t2v_step, "EVS video-block step",
               "T2I step (1-based) whose x0 prediction enters the video block; -1: the middle one; 0: no block "
               "(plain SDEdit in image mode).", minimum=-1, evs="t2v_step"),
    WebUIField("evs_video_strength", float, _EVS.video_strength, "EVS video strength s_V",
               "Noise level the video block starts from: t_V = timesteps[S - int(S * s_V)].", minimum=0.01,
               maximum=1.0, evs="video_strength"),
    WebUIField("evs_video_steps", int, _EVS.video_steps, "EVS video steps n_V",
               "Video steps in the block, 0..int(S * s_V); -1: min(4, int(S * s_V)).", minimum=-1,
               evs="video_steps"),
    WebUIField("evs_fresh_bridge_noise", bool, _EVS.fresh_bridge_noise, "Fresh bridge noise",
               "Re-noise into and out of the video block with fresh draws (off: reuse the SDEdit noise).",
               evs="fresh_bridge_noise"),
    WebUIField("evs_inversion", bool, _EVS.inversion, "DDIM inversion to t_V",
               "Reach t_V by DDIM inversion with the video model (no CFG, extra calls) instead of SDEdit noising.",
               evs="inversion"),
    WebUIField("evs_sfi", bool, _EVS.sfi, "Selective Feature Injection (SFI)",
               "Needs DDIM inversion: the video steps attend, in the chosen layers, with the inversion's spatial "
               "self-attention K, V and the query gamma*Q_inv + (1-gamma)*Q (EVS Eq. 11). No extra UNet calls.",
               evs="sfi"),
    WebUIField("evs_sfi_gamma", float, _EVS.sfi_gamma, "SFI gamma",
               "Query mix: 1 = the inversion's query; the paper's points: 0.8 deep, 0.5 shallow.", minimum=0.0,
               maximum=1.0, step=0.05, evs="sfi_gamma"),
    WebUIField("evs_sfi_layers", str, _EVS.sfi_layers, "SFI layers",
               "deep (middle block + lowest-resolution input/output blocks), shallow (highest-resolution ones), "
               "all, or ldm module-name prefixes such as middle_block,output_blocks.3.", evs="sfi_layers"),
)
EXTRA_BY_NAME: Dict[str, WebUIField] = {f.name: f for f in EXTRA_FIELDS}
EXTRA_NAMES: Tuple[str, ...] = tuple(f.name for f in EXTRA_FIELDS)
EVS_FIELDS: Tuple[WebUIField, ...] = tuple(f for f in EXTRA_FIELDS if f.evs)


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise SettingsError(name, value, "true or false")


def coerce_extra(name: str, value: Any) -> Any:
    """A panel/API/infotext value in the field's type (the anchor image is decoded elsewhere)."""
    spec = EXTRA_BY_NAME[name]
    if spec.kind is bool:
        return as_bool(name, value)
    try:
        if spec.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if spec.kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if spec.kind is int else "a number"
        raise SettingsError(name, value, kind) from None
    if spec.choices and (not isinstance(value, str) or value not in spec.choices):
        raise SettingsError(name, value, "one of " + ", ".join(spec.choices))
    if name == "evs_sfi_layers":
        try:
            parse_sfi_layers(value)
        except ValueError:
            raise SettingsError(name, value, SFI_LAYERS_ALLOWED) from None
    elif not isinstance(value, str):
        raise SettingsError(name, value, "text")
    return value


def evs_settings(values: Mapping[str, Any]) -> EVSSettings:
    """``EVSSettings`` from checked ``evs_*`` values (missing ones take the defaults); it names bad values."""
    return EVSSettings(**{f.evs: values.get(f.name, f.default) for f in EVS_FIELDS})


def evs_record(evs: EVSSettings) -> Dict[str, Any]:
    """The EVS settings under their API/infotext names."""
    return {f.name: getattr(evs, f.evs) for f in EVS_FIELDS}

"""The node's widgets, made from ``core.settings.FIELDS`` (names, kinds, defaults, ranges, help), and the one
conversion of their values into ``I4VGenSettings`` (the CLI's and the WebUI's validation and messages).

ComfyUI presents only: the generation settings the graph does not give (seed, steps, cfg = the table's
``guidance``; frames and size come from the LATENT, the prompt from the CONDITIONING), the modes this node runs, and
no SFI (it needs attention hooks this adapter does not have)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ..core.settings import FIELD_BY_NAME, SEED_MAX, FieldSpec, I4VGenSettings
from ..errors import SettingsError

# Widget name -> the table's setting (only "cfg" differs: ComfyUI's samplers call it so).
WIDGETS: Dict[str, str] = {
    "seed": "seed", "steps": "steps", "cfg": "guidance",
    "preset": "preset", "candidates": "candidates", "nivsds_fraction": "nivsds_fraction",
    "alpha_schedule": "alpha_schedule", "regen_strength": "regen_strength", "anchor_index": "anchor_index",
    "mode": "mode",
    "evs_strength": "evs_strength", "evs_t2v_step": "evs_t2v_step", "evs_video_strength": "evs_video_strength",
    "evs_video_steps": "evs_video_steps", "evs_fresh_bridge_noise": "evs_fresh_bridge_noise",
    "evs_inversion": "evs_inversion",
}
NODE_MODES: Tuple[str, ...] = ("i4vgen", "i4vgen+evs")
PROMPT_HELP = ("The text the ranker scores the candidates against (the model's prompt comes from the positive "
               "CONDITIONING). Needed when a ranker other than 'none' ranks.")
SLIDER_STEPS = {"nivsds_fraction": 0.01, "regen_strength": 0.01, "evs_strength": 0.01, "evs_video_strength": 0.01,
                "guidance": 0.1}
INT_CEILING = 999


def widget(spec: FieldSpec) -> Tuple[Any, Dict[str, Any]]:
    """One ComfyUI input declaration for a setting of the table."""
    options: Dict[str, Any] = {"default": spec.default, "tooltip": spec.help}
    if spec.name == "mode":
        return list(NODE_MODES), {"default": "i4vgen", "tooltip": spec.help}
    if spec.choices:
        return list(spec.choices), options
    if spec.kind is bool:
        return "BOOLEAN", options
    if spec.kind is str:
        return "STRING", options
    if spec.kind is int:
        options["min"] = 0 if spec.name == "seed" else int(spec.minimum)
        options["max"] = SEED_MAX if spec.name == "seed" else int(spec.maximum if spec.maximum is not None
                                                                    else INT_CEILING)
        if spec.name == "seed":
            options["control_after_generate"] = True
        return "INT", options
    options.update(min=float(spec.minimum), max=float(spec.maximum), step=SLIDER_STEPS.get(spec.name, 0.01))
    return "FLOAT", options


def setting_widgets() -> Dict[str, Tuple[Any, Dict[str, Any]]]:
    return {name: widget(FIELD_BY_NAME[setting]) for name, setting in WIDGETS.items()}


def build_settings(values: Mapping[str, Any], *, frames: int, width: Optional[int] = None,
                   height: Optional[int] = None, prompt: str = "") -> I4VGenSettings:
    """The run's settings: the preset's method values, then the widgets', then the size the LATENT gives. Raises
    the table's ``SettingsError`` naming the widget (``cfg`` for ``guidance``)."""
    unknown = sorted(set(values) - set(WIDGETS))
    if unknown:
        raise SettingsError(unknown[0], values[unknown[0]], "a known input: " + ", ".join(WIDGETS))
    if "mode" in values and values["mode"] not in NODE_MODES:
        raise SettingsError("mode", values["mode"], "one of " + ", ".join(NODE_MODES))
    overrides = {WIDGETS[name]: value for name, value in values.items() if name != "preset"}
    preset = values.get("preset", FIELD_BY_NAME["preset"].default)
    try:
        return I4VGenSettings.from_preset(preset, **overrides, frames=frames, width=width, height=height,
                                          prompt=prompt)
    except SettingsError as error:
        if error.name == "guidance":
            raise SettingsError("cfg", error.value, error.allowed) from None
        raise

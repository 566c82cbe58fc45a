"""The I4VGen panel (gradio 3.41), its paste-back fields, the candidates gallery and the Settings section.

``build_panel`` only creates components and wires events among them: A1111 calls ``Script.ui`` once per tab and
again inside a throwaway ``gr.Blocks`` for the API defaults (``Api.init_default_script_args``), so it must not
register callbacks, load models or touch global state."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ..core.settings import FIELD_BY_NAME, IMAGE, PRESETS, I4VGenSettings
from . import fields
from .args import UI_ORDER
from .infotext import PASTE_NAMES, paste_getter

SETTINGS_SECTION = ("i4vgen", "I4VGen")


def short_help(name: str) -> str:
    text = FIELD_BY_NAME[name].help
    return text.split(". ")[0].rstrip(".") + "."


def preset_values(preset: str) -> Tuple[Any, ...]:
    """The method values a preset sets in the panel (candidates, NI-VSDS fraction, alphas, regeneration)."""
    s = I4VGenSettings.from_preset(preset if preset in PRESETS else "official")
    return s.candidates, s.nivsds_fraction, s.alpha_schedule, s.regen_strength


@dataclass
class Panel:
    controls: List[Any]
    infotext_fields: List[Tuple[Any, Any]]
    gallery: Any
    refresh: Any


class CandidateStore:
    """The last job's candidates per tab, shown in the panel's gallery on refresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: Dict[str, List[Tuple[Any, str]]] = {}

    def put(self, tab: str, items: List[Tuple[Any, str]]) -> None:
        with self._lock:
            self._items[tab] = list(items)

    def get(self, tab: str) -> List[Tuple[Any, str]]:
        with self._lock:
            return list(self._items.get(tab, []))


candidate_store = CandidateStore()


def control(name: str, elem_id: Any, value: Any = None) -> Any:
    """The panel control of one setting: kind, range, choices, default and help from ``core.settings.FIELDS``,
    label, slider step and control type from ``fields.PRESENTATION``."""
    import gradio as gr

    spec, look = fields.spec(name), fields.PRESENTATION.get(name, fields.Presentation(name))
    value = fields.default(name) if value is None else value
    info = look.info or (fields.MODE_HELP if name == "mode" else
                         spec.help if spec.group in ("anchor", "evs") else short_help(name))
    common = dict(label=look.label, elem_id=elem_id(name))
    if spec.kind is IMAGE:
        # RGBA keeps transparency, which load_anchor_image composites on white as the API path does.
        return gr.Image(None, type="pil", image_mode="RGBA", source="upload", height=256,
                        elem_classes=["i4vgen-anchor-image"], **common)
    if spec.kind is bool:
        return gr.Checkbox(value, info=info, **common)
    choices = list(fields.WEBUI_MODES) if name == "mode" else list(spec.choices)
    if look.control == "radio":
        return gr.Radio(choices, value=value, info=info, **common)
    if look.control == "dropdown":
        return gr.Dropdown(choices, value=value, info=info, **common)
    if look.control == "slider":
        low = spec.minimum + look.step if spec.open_minimum else spec.minimum
        return gr.Slider(low, spec.maximum, value=value, step=look.step, info=info, **common)
    if spec.kind is str:
        return gr.Textbox(value, info=info, **common)
    return gr.Number(value, precision=0 if spec.kind is int else None, minimum=spec.minimum, maximum=spec.maximum,
                     info=info, **common)


def _rows(rows: Tuple[Tuple[str, ...], ...], by_name: Dict[str, Any], elem_id: Any,
          values: Dict[str, Any] = {}) -> None:
    import gradio as gr

    for row in rows:
        with gr.Row():
            for name in row:
                by_name[name] = control(name, elem_id, values.get(name))


def build_panel(elem_id: Any, is_img2img: bool, default_preset: str = "official") -> Panel:
    import gradio as gr

    tab = "img2img" if is_img2img else "txt2img"
    s = I4VGenSettings.from_preset(default_preset if default_preset in PRESETS else "official")
    by_name: Dict[str, Any] = {}
    with gr.Accordion("I4VGen", open=False, elem_id=elem_id("accordion"), elem_classes=["i4vgen-panel"]):
        if is_img2img:
            gr.HTML("<p class='i4vgen-note'>On img2img the init image is the anchor: no candidates, no ranker; "
                    "NI-VSDS and regeneration animate it.</p>")
        gr.HTML("<p class='i4vgen-note'>Works together with AnimateDiff: tick both. Anchor images are made without "
                "the motion module (or taken from your image), then NI-VSDS and regeneration run in video mode; "
                "EVS can refine the result.</p>")
        by_name["enable"] = gr.Checkbox(False, label="Enable I4VGen", elem_id=elem_id("enable"),
                                        info="Runs I4VGen on AnimateDiff's video job (AnimateDiff must be enabled too).")
        by_name["mode"] = control("mode", elem_id)
        _rows(fields.ROWS, by_name, elem_id, values=s.method_dict())  # the server's default preset
        with gr.Row():
            by_name["anchor_index"] = control("anchor_index", elem_id)
            by_name["return_candidates"] = gr.Checkbox(False, label="Return candidates",
                                                       elem_id=elem_id("return_candidates"),
                                                       info="Show the N anchor candidates with their scores.")
        with gr.Accordion("Anchor image (optional: replaces candidates and ranking)", open=False,
                          elem_id=elem_id("anchor_box")):
            for name in ("anchor_image", "anchor_sample"):
                by_name[name] = control(name, elem_id)
        with gr.Accordion("EVS refinement (modes i4vgen+evs and evs)", open=False, elem_id=elem_id("evs_box")):
            gr.HTML("<p class='i4vgen-note'>T2I + [T2V] + T2I refinement of the finished video (EVS, Su et al. "
                    "2025). The EVS authors' code is not public: these defaults are ours.</p>")
            _rows(fields.EVS_ROWS, by_name, elem_id)
        with gr.Accordion("Candidates of the last job", open=False, elem_id=elem_id("candidates_box")):
            gallery = gr.Gallery(label="Candidates", show_label=False, columns=8, height="auto",
                                 elem_id=f"i4vgen_candidates_{tab}", elem_classes=["i4vgen-candidates"])
            refresh = gr.Button("Show candidates of the last job", elem_id=f"i4vgen_refresh_{tab}",
                                elem_classes=["i4vgen-refresh"])

    preset, candidates = by_name["preset"], by_name["candidates"]
    nivsds_fraction, alpha_schedule = by_name["nivsds_fraction"], by_name["alpha_schedule"]
    regen_strength = by_name["regen_strength"]
    preset.change(fn=preset_values, inputs=[preset], outputs=[candidates, nivsds_fraction, alpha_schedule, regen_strength],
                  show_progress=False)
    refresh.click(fn=lambda: candidate_store.get(tab), inputs=[], outputs=[gallery], show_progress=False)

    controls = [by_name[name] for name in UI_ORDER]
    paste = [(by_name[name], paste_getter(name)) for name in PASTE_NAMES if name != "ranker_path"]
    return Panel(controls=controls, infotext_fields=paste, gallery=gallery, refresh=refresh)


def register_settings() -> None:
    """``script_callbacks.on_ui_settings`` callback: Settings > I4VGen."""
    import gradio as gr

    from . import shim

    shared = shim.shared()
    OptionInfo = shared.OptionInfo
    shared.opts.add_option("i4vgen_reward_model_dir", OptionInfo(
        "", "Reward-model folder (replaces the WebUI's models folder for rankers: weights and the panel's ranker folders "
        "go in its ImageReward/; empty: the WebUI's models folder)", section=SETTINGS_SECTION))
    shared.opts.add_option("i4vgen_keep_ranker_loaded", OptionInfo(
        False, "Keep the ranker loaded between jobs (faster, uses memory)", gr.Checkbox, section=SETTINGS_SECTION))
    shared.opts.add_option("i4vgen_default_preset", OptionInfo(
        "official", "Default preset (panel and API requests without 'preset')", gr.Radio,
        {"choices": list(PRESETS)}, section=SETTINGS_SECTION))

"""The I4VGen panel (gradio 3.41), its paste-back fields, the candidates gallery and the Settings section.

``build_panel`` only creates components and wires events among them: A1111 calls ``Script.ui`` once per tab and
again inside a throwaway ``gr.Blocks`` for the API defaults (``Api.init_default_script_args``), so it must not
register callbacks, load models or touch global state."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ..core.settings import FALLBACKS, FIELD_BY_NAME, PRESETS, RANKERS, I4VGenSettings
from .args import UI_ORDER
from .fields import EVS_FIELDS, EXTRA_BY_NAME, IMAGE, WebUIField
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


def extra_control(spec: WebUIField, elem_id: Any) -> Any:
    """The panel control for one of the WebUI's own fields, from its entry in ``fields.EXTRA_FIELDS``."""
    import gradio as gr

    common = dict(label=spec.label, elem_id=elem_id(spec.name))
    if spec.kind is IMAGE:
        # RGBA keeps transparency, which load_anchor_image composites on white as the API path does.
        return gr.Image(None, type="pil", image_mode="RGBA", source="upload", height=256,
                        elem_classes=["i4vgen-anchor-image"], **common)
    if spec.kind is bool:
        return gr.Checkbox(spec.default, info=spec.help, **common)
    if spec.choices:
        return gr.Radio(list(spec.choices), value=spec.default, info=spec.help, **common)
    if spec.kind is float:
        return gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step, info=spec.help, **common)
    if spec.kind is str:
        return gr.Textbox(spec.default, info=spec.help, **common)
    return gr.Number(spec.default, precision=0, minimum=spec.minimum, info=spec.help, **common)


def build_panel(elem_id: Any, is_img2img: bool, default_preset: str = "official") -> Panel:
    import gradio as gr

    tab = "img2img" if is_img2img else "txt2img"
    s = I4VGenSettings.from_preset(default_preset if default_preset in PRESETS else "official")
    with gr.Accordion("I4VGen", open=False, elem_id=elem_id("accordion"), elem_classes=["i4vgen-panel"]):
        if is_img2img:
            gr.HTML("<p class='i4vgen-note'>I4VGen runs in txt2img only; img2img is not supported yet.</p>")
        gr.HTML("<p class='i4vgen-note'>Works together with AnimateDiff: tick both. Anchor images are made without "
                "the motion module (or taken from your image), then NI-VSDS and regeneration run in video mode; "
                "EVS can refine the result.</p>")
        enable = gr.Checkbox(False, label="Enable I4VGen", elem_id=elem_id("enable"),
                             info="Runs I4VGen on AnimateDiff's video job (AnimateDiff must be enabled too).")
        extras = {"mode": extra_control(EXTRA_BY_NAME["mode"], elem_id)}
        with gr.Row():
            preset = gr.Dropdown(list(PRESETS), value=s.preset, label="Preset", elem_id=elem_id("preset"),
                                 info=short_help("preset"))
            candidates = gr.Slider(1, 64, value=s.candidates, step=1, label="Candidates N",
                                   elem_id=elem_id("candidates"), info=short_help("candidates"))
        with gr.Row():
            nivsds_fraction = gr.Slider(0.0, 1.0, value=s.nivsds_fraction, step=0.02, label="NI-VSDS fraction",
                                        elem_id=elem_id("nivsds_fraction"), info=short_help("nivsds_fraction"))
            regen_strength = gr.Slider(0.0, 1.0, value=s.regen_strength, step=0.02, label="Regeneration strength",
                                       elem_id=elem_id("regen_strength"), info=short_help("regen_strength"))
        alpha_schedule = gr.Textbox(s.alpha_schedule, label="NI-VSDS step sizes (alpha schedule)",
                                    elem_id=elem_id("alpha_schedule"), info=short_help("alpha_schedule"))
        with gr.Row():
            ranker = gr.Dropdown(list(RANKERS), value=s.ranker, label="Ranker", elem_id=elem_id("ranker"),
                                 info=short_help("ranker"))
            ranker_fallback = gr.Dropdown(list(FALLBACKS), value=s.ranker_fallback, label="Ranker fallback",
                                          elem_id=elem_id("ranker_fallback"), info=short_help("ranker_fallback"))
        ranker_path = gr.Textbox(s.ranker_path, label="Ranker folder (optional)", elem_id=elem_id("ranker_path"),
                                 info="The name of a folder inside models/ImageReward/ holding the ranker's files "
                                      "(not a path); empty: search the usual places.")
        with gr.Row():
            anchor_index = gr.Number(s.anchor_index, precision=0, minimum=-1, maximum=63,
                                     label="Manual anchor index (-1: ranker)", elem_id=elem_id("anchor_index"),
                                     info="Click a candidate below to pick it.")
            return_candidates = gr.Checkbox(False, label="Return candidates", elem_id=elem_id("return_candidates"),
                                            info="Show the N anchor candidates with their scores.")
        with gr.Accordion("Anchor image (optional: replaces candidates and ranking)", open=False,
                          elem_id=elem_id("anchor_box")):
            for name in ("anchor_image", "anchor_sample"):
                extras[name] = extra_control(EXTRA_BY_NAME[name], elem_id)
        with gr.Accordion("EVS refinement (modes i4vgen+evs and evs)", open=False, elem_id=elem_id("evs_box")):
            gr.HTML("<p class='i4vgen-note'>T2I + [T2V] + T2I refinement of the finished video (EVS, Su et al. "
                    "2025). The EVS authors' code is not public: these defaults are ours.</p>")
            for row in (EVS_FIELDS[:2], EVS_FIELDS[2:4], EVS_FIELDS[4:6], EVS_FIELDS[6:]):
                with gr.Row():
                    for spec in row:
                        extras[spec.name] = extra_control(spec, elem_id)
        with gr.Accordion("Candidates of the last job", open=False, elem_id=elem_id("candidates_box")):
            gallery = gr.Gallery(label="Candidates", show_label=False, columns=8, height="auto",
                                 elem_id=f"i4vgen_candidates_{tab}", elem_classes=["i4vgen-candidates"])
            refresh = gr.Button("Show candidates of the last job", elem_id=f"i4vgen_refresh_{tab}",
                                elem_classes=["i4vgen-refresh"])

    preset.change(fn=preset_values, inputs=[preset], outputs=[candidates, nivsds_fraction, alpha_schedule, regen_strength],
                  show_progress=False)
    refresh.click(fn=lambda: candidate_store.get(tab), inputs=[], outputs=[gallery], show_progress=False)

    by_name = {
        "enable": enable, "preset": preset, "candidates": candidates, "nivsds_fraction": nivsds_fraction,
        "alpha_schedule": alpha_schedule, "regen_strength": regen_strength, "ranker": ranker,
        "ranker_path": ranker_path, "ranker_fallback": ranker_fallback, "anchor_index": anchor_index,
        "return_candidates": return_candidates, **extras,
    }
    controls = [by_name[name] for name in UI_ORDER]
    fields = [(by_name[name], paste_getter(name)) for name in PASTE_NAMES if name != "ranker_path"]
    return Panel(controls=controls, infotext_fields=fields, gallery=gallery, refresh=refresh)


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

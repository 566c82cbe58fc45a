"""The host-like harness: the stand-in WebUI (tests/host/standin) with the stand-in AnimateDiff and this
extension loaded the way A1111 loads extensions, a tiny model as ``shared.sd_model`` with A1111's "sdp" attention
optimization applied to ldm's ``CrossAttention`` class, and the txt2img/img2img script runners built inside a real
gradio 3.41 ``gr.Blocks``. Runs only in .venv-host (no diffusers)."""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"
AD_DIR = STANDIN / "extensions" / "sd-webui-animatediff"
CN_DIR = STANDIN / "extensions" / "sd-webui-controlnet"
REPO = HERE.parents[1]
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

collect_ignore_glob = ["standin/*"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/host" in str(item.fspath):
            item.add_marker(pytest.mark.host)


@dataclass
class Host:
    runners: Dict[str, Any]
    defaults: Dict[str, List[Any]]
    model: Any

    def script(self, tab: str, title: str):
        return next(s for s in self.runners[tab].alwayson_scripts if s.title() == title)


class RankerStub:
    """A ranker with the rankers package's interface: prefers brighter images (deterministic), counts calls."""

    def __init__(self, name="imagereward", hook=None):
        self.name, self.hook, self.calls, self.unloaded, self.loads = name, hook, 0, 0, 0

    def score(self, prompt, images):
        self.calls += 1
        if self.hook is not None:
            self.hook()
        return [float(sum(image.convert("L").getdata())) / (image.width * image.height) for image in images]

    def unload(self):
        self.unloaded += 1


@pytest.fixture(scope="session")
def host() -> Host:
    import gradio as gr
    import torch
    from modules import script_callbacks, script_loading, scripts, sd_hijack_optimizations, shared
    from modules.api import api
    from tinymodel import TinyLatentDiffusion

    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead on the shared 2-core machine
    shared.sd_model = TinyLatentDiffusion()
    sd_hijack_optimizations.SdOptimizationSdp().apply()  # as sd_hijack.apply_optimizations does at model load
    script_loading.load_extension_scripts(str(AD_DIR))
    script_loading.load_extension_scripts(str(REPO))
    script_callbacks.ui_settings_callback()
    all_scripts = list(scripts.scripts_data)
    script_loading.load_extension_scripts(str(CN_DIR))
    cn_scripts = [d for d in scripts.scripts_data if d not in all_scripts]
    ad_scripts = [d for d in all_scripts if "animatediff" in d[1]]
    runners, defaults = {}, {}
    # ControlNet's script runs before I4VGen's ("cn_first") or after it ("cn_last"): A1111 orders them by folder
    for tab, is_img2img, data in (("txt2img", False, all_scripts), ("img2img", True, all_scripts),
                                  ("no_ad", False, [d for d in all_scripts if "animatediff" not in d[1]]),
                                  ("cn_first", False, ad_scripts + cn_scripts + [d for d in all_scripts if d not in ad_scripts]),
                                  ("cn_last", False, all_scripts + cn_scripts)):
        scripts.scripts_data[:] = data
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(is_img2img)
        with gr.Blocks():
            runner.setup_ui()
        runners[tab] = runner
        defaults[tab] = api.init_default_script_args(runner)
    scripts.scripts_data[:] = all_scripts
    return Host(runners, defaults, shared.sd_model)


@pytest.fixture(autouse=True)
def clean_state(host):
    from modules import errors, extra_networks, shared

    shared.state.begin()
    shared.state.job_count = -1
    errors.reported.clear()
    extra_networks.active_lora.clear()
    extra_networks.activations.clear()
    host.model.unet_log.clear()
    host.model.encode_log.clear()
    host.model.context_log.clear()
    import torch

    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # oneDNN's per-call setup costs more than these tiny convolutions
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
    shared.state.end()
    from scripts.animatediff_mm import AnimateDiffMM, mm_animatediff

    if AnimateDiffMM.mm_injected:  # a job that raised never reached AnimateDiff's postprocess (as in A1111)
        mm_animatediff.restore(shared.sd_model)


def ad_args(**overrides) -> Dict[str, Any]:
    values = dict(enable=True, model="mm_sd15_v3.safetensors", video_length=0, batch_size=8, format=["GIF"])
    values.update(overrides)
    return values


def make_p(host: Host, *, i4vgen: Any = None, ad: Optional[Dict[str, Any]] = None, tab: str = "txt2img",
           api: bool = False, cn: Optional[List[Dict[str, Any]]] = None, **fields):
    """A txt2img ``p`` as the UI (``modules/txt2img.py``) or the API would hand it to ``process_images``; ``cn``:
    ControlNet's units (tabs "cn_first"/"cn_last"), as the panel's unit objects or, under the API, dicts."""
    from modules import processing
    from scripts.animatediff_ui import AnimateDiffProcess

    values = dict(prompt="a corgi running on the beach", negative_prompt="blurry", seed=1234, subseed=-1, steps=4,
                  cfg_scale=5.0, width=64, height=64, sampler_name="Euler", batch_size=1, n_iter=1,
                  do_not_save_samples=True)
    values.update(fields)
    cls = processing.StableDiffusionProcessingImg2Img if tab == "img2img" else processing.StableDiffusionProcessingTxt2Img
    p = cls(**values)
    runner = host.runners[tab]
    args = list(copy.copy(host.defaults[tab]))
    ad_script = next((s for s in runner.alwayson_scripts if s.title() == "AnimateDiff"), None)
    if ad_script is not None:
        args[ad_script.args_from] = (dict(ad) if api else AnimateDiffProcess(**ad)) if ad is not None else AnimateDiffProcess()
    ours = next(s for s in runner.alwayson_scripts if s.title() == "I4VGen")
    if isinstance(i4vgen, dict):
        args[ours.args_from] = i4vgen
    elif i4vgen is not None:
        for i, value in enumerate(i4vgen):
            args[ours.args_from + i] = value
    if cn is not None:
        from scripts.external_code import ControlNetUnit

        cn_script = next(s for s in runner.alwayson_scripts if s.title() == "ControlNet")
        for i, unit in enumerate(cn):
            args[cn_script.args_from + i] = dict(unit) if api else ControlNetUnit(**unit)
    p.is_api = api
    p.scripts = runner
    p.script_args = tuple(args) if api else args
    return p


def run(p):
    from modules import processing

    return processing.process_images(p)


def run_stopped(p, action: str) -> None:
    """Run a job that a trigger stops: an error propagates; an interrupt or skip finishes the job with an I4VGen
    infotext that says so and where (the video is unfinished) and AnimateDiff's postprocess still runs."""
    from scripts.animatediff_mm import AnimateDiffMM

    if action == "error":
        with pytest.raises(RuntimeError, match="boom"):
            run(p)
        return
    import json

    res = run(p)
    record = json.loads(p.extra_generation_params["I4VGen"])
    word = "skipped" if action == "skip" else "interrupted"
    assert record[word] in STAGE_LABELS.values() and "unet_calls" not in record and "chosen_anchor" not in record
    assert any(f"{word} during {record[word]}" in comment for comment in p.comments)
    assert res.images and AnimateDiffMM.mm_injected is False


from i4vgen_ext.core.compose import STAGE_LABELS  # noqa: E402

# Stages, host state and triggers shared by the job tests -------------------------------------------------------------
STAGE_TEXT = {"anchors": "I4VGen: anchor images", "ranking": "I4VGen: ranking", "ni-vsds": "I4VGen: NI-VSDS",
              "regeneration": "I4VGen: regeneration", "plain": "I4VGen: AnimateDiff video",
              "evs-image": "I4VGen: EVS image steps", "evs-video": "I4VGen: EVS video block",
              "evs-inversion": "I4VGen: EVS inversion"}


@pytest.fixture
def stub(monkeypatch):
    """The ranker every job gets; ``loads`` counts how often a ranker was loaded at all."""
    from i4vgen_ext.webui import ranking

    ranker = RankerStub()

    def loader(name, **kwargs):
        ranker.loads += 1
        return ranker, name

    monkeypatch.setattr(ranking, "default_loader", loader)
    return ranker


def stage_calls(model, stage):
    return [entry for entry in model.unet_log if (entry[0] or "").startswith(STAGE_TEXT[stage])]


def host_state(p, model):
    """Everything I4VGen may touch, by identity where identity matters."""
    from scripts.animatediff_mm import AnimateDiffMM, mm_animatediff

    from i4vgen_ext.webui.plan import BORROWED_FIELDS

    unet = model.model.diffusion_model
    return {
        "mm_injected": AnimateDiffMM.mm_injected,
        "alphas": (id(model.alphas_cumprod), model.alphas_cumprod.clone()),
        "alphas_original": id(model.alphas_cumprod_original),
        "ad_prev_alphas": (id(mm_animatediff.prev_alpha_cumprod), id(mm_animatediff.prev_alpha_cumprod_original)),
        "unet_layers": ([len(b) for b in unet.input_blocks], len(unet.middle_block), [len(b) for b in unet.output_blocks]),
        "p_fields": {name: (id(vars(p).get(name)), repr(vars(p).get(name))) for name in BORROWED_FIELDS},
        "p_rng": id(p.rng),
        "p_seeds": list(p.seeds), "p_all_seeds": list(p.all_seeds),
        "p_prompts": list(p.prompts), "p_c": id(p.c), "p_uc": id(p.uc),
        "p_sample_replaced_by_host": "sample" in vars(p),
        "cfg_scale": p.cfg_scale, "steps": p.steps, "sampler_name": p.sampler_name,
    }


@pytest.fixture
def watch(monkeypatch):
    """Host state just before I4VGen's sampling and just after it ends, however it ends."""
    from i4vgen_ext.webui import job as i4vgen_job

    seen = []
    original = i4vgen_job.sample_batch

    def spy(p, plan, cache, *rest):
        from modules import shared

        before = host_state(p, shared.sd_model)
        try:
            return original(p, plan, cache, *rest)
        finally:
            seen.append((before, host_state(p, shared.sd_model)))

    monkeypatch.setattr(i4vgen_job, "sample_batch", spy)
    return seen


def assert_restored(seen, p):
    import torch

    assert seen, "I4VGen's sampling never ran"
    for before, after in seen:
        assert before["mm_injected"] is True
        for key in before:
            if key == "alphas":
                assert before[key][0] == after[key][0] and torch.equal(before[key][1], after[key][1])
            elif key != "p_sample_replaced_by_host":
                assert before[key] == after[key], key
    assert "sample" not in vars(p)  # p.sample is the class's again


def trigger_in(monkeypatch, host, stub, stage, action):
    """Interrupt, skip or raise inside ``stage`` (at its first UNet call; ranking: in the ranker)."""
    from modules import shared

    def fire():
        if action == "interrupt":
            shared.state.interrupt()
        elif action == "skip":
            shared.state.skip()
        else:
            raise RuntimeError(f"boom in {stage}")

    if stage == "ranking":
        stub.hook = fire
        return
    model = host.model
    original = model.apply_model

    def apply_model(x, t, cond):
        if (shared.state.textinfo or "").startswith(STAGE_TEXT[stage]):
            fire()
        return original(x, t, cond)

    monkeypatch.setattr(model, "apply_model", apply_model)


# Panel arguments, images and pasting ----------------------------------------------------------------------------------
def ui_args(host: Host, **named) -> List[Any]:
    """The panel's positional values (defaults as the UI builds them) with I4VGen on and ``named`` overrides."""
    from i4vgen_ext.webui.args import UI_ORDER

    script = host.script("txt2img", "I4VGen")
    values = dict(zip(UI_ORDER, host.defaults["txt2img"][script.args_from:script.args_to]))
    values.update(enable=True, candidates=2, return_candidates=False)
    values.update(named)
    return [values[name] for name in UI_ORDER]


def gradient(width: int, height: int, mode: str = "RGB"):
    """A small test picture built in code (no binary fixtures)."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * y) % 256)
                   for y in range(height) for x in range(width)])
    return image if mode == "RGB" else image.convert(mode)


def b64(image_or_bytes, fmt: str = "PNG") -> str:
    import base64
    import io

    if isinstance(image_or_bytes, (bytes, bytearray)):
        return base64.b64encode(image_or_bytes).decode()
    buffer = io.BytesIO()
    image_or_bytes.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def gif_frames(path):
    from PIL import Image, ImageSequence

    return [list(frame.convert("RGB").getdata()) for frame in ImageSequence.Iterator(Image.open(path))]


def pasted_values(host: Host, text: str) -> Dict[str, Any]:
    """What the UI's paste puts into each of the panel's pasteable controls (None: left as it is)."""
    from modules import infotext_utils

    from i4vgen_ext.webui.infotext import PASTE_NAMES

    script = host.script("txt2img", "I4VGen")
    values = infotext_utils.paste_func(script.infotext_fields, text)
    names = [name for name in PASTE_NAMES if name != "ranker_path"]
    return dict(zip(names, values))

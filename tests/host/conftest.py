"""The host-like harness: the stand-in WebUI (tests/host/standin) with the stand-in AnimateDiff and this
extension loaded the way A1111 loads extensions, a tiny model as ``shared.sd_model``, and the txt2img/img2img
script runners built inside a real gradio 3.41 ``gr.Blocks``. Runs only in .venv-host (no diffusers)."""
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
        self.name, self.hook, self.calls, self.unloaded = name, hook, 0, 0

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

    from modules import script_callbacks, script_loading, scripts, shared
    from modules.api import api
    from tinymodel import TinyLatentDiffusion

    import torch

    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead on the shared 2-core machine
    shared.sd_model = TinyLatentDiffusion()
    script_loading.load_extension_scripts(str(AD_DIR))
    script_loading.load_extension_scripts(str(REPO))
    script_callbacks.ui_settings_callback()
    all_scripts = list(scripts.scripts_data)
    runners, defaults = {}, {}
    for tab, is_img2img, data in (("txt2img", False, all_scripts), ("img2img", True, all_scripts),
                                  ("no_ad", False, [d for d in all_scripts if "animatediff" not in d[1]])):
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
    yield
    shared.state.end()
    from scripts.animatediff_mm import AnimateDiffMM, mm_animatediff

    if AnimateDiffMM.mm_injected:  # a job that raised never reached AnimateDiff's postprocess (as in A1111)
        mm_animatediff.restore(shared.sd_model)


def ad_args(**overrides) -> Dict[str, Any]:
    values = dict(enable=True, model="mm_sd15_v3.safetensors", video_length=0, batch_size=8, format=["GIF"])
    values.update(overrides)
    return values


def make_p(host: Host, *, i4vgen: Any = None, ad: Optional[Dict[str, Any]] = None, tab: str = "txt2img",
           api: bool = False, **fields):
    """A txt2img ``p`` as the UI (``modules/txt2img.py``) or the API would hand it to ``process_images``."""
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
    p.is_api = api
    p.scripts = runner
    p.script_args = tuple(args) if api else args
    return p


def run(p):
    from modules import processing

    return processing.process_images(p)

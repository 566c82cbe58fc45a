"""Fixtures for the live-WebUI suite: the server (env ``I4VGEN_WEBUI_URL``; every test here is skipped when it is not
set), request builders with tiny settings, the session's reference plain AnimateDiff video, and the measured numbers
(printed at the end of the run)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from ..live_suite import answer, live_hooks, server_url
from .client import WebUI, gif_sizes

URL_ENV = "I4VGEN_WEBUI_URL"
HERE = Path(__file__).resolve().parent

# Tiny jobs: each takes ~30-60 s on a 2-core CPU with full-size random SD1.5 + motion module weights.
PROMPT = "head, a red ball, tail"  # = frame 0's prompt of the prompt-travel test (AnimateDiff joins head, line, tail)
SEED = 1234
STEPS = 4
FRAMES = 8
SIZE = 64
CANDIDATES = 2
MOTION_MODULE = "mm_sd_v15_v2.safetensors"  # what tests/webui_api/build_models.py writes
XL_SIZE = 128  # 16x16 latents through SDXL's three UNet levels
OPTIONS = "/sdapi/v1/options"

MEASURED: Dict[str, Any] = {}  # numbers the tests measured, printed in the terminal summary


pytest_collection_modifyitems, pytest_terminal_summary, measured = live_hooks(HERE, URL_ENV, "WebUI", MEASURED)


@pytest.fixture(scope="session")
def webui() -> WebUI:
    url = server_url(URL_ENV, "WebUI")
    client = WebUI(url)
    status, scripts = answer(client, "/sdapi/v1/scripts", URL_ENV, url)
    assert status == 200, f"GET /sdapi/v1/scripts: HTTP {status}: {scripts}"
    for tab in ("txt2img", "img2img"):
        names = {name.lower() for name in scripts[tab]}
        missing = {"animatediff", "i4vgen"} - names
        assert not missing, f"the WebUI's {tab} scripts lack {sorted(missing)}: {sorted(names)}"
    return client


def motion_module_folder(webui: WebUI) -> Optional[Path]:
    """AnimateDiff's model folder when the server shares this machine's disk (None otherwise)."""
    _, options = webui.get("/sdapi/v1/options")
    _, flags = webui.get("/sdapi/v1/cmd-flags")
    candidates = [options.get("animatediff_model_path") or ""]
    if isinstance(flags, dict) and flags.get("data_dir"):
        candidates.append(os.path.join(flags["data_dir"], "extensions", "sd-webui-animatediff", "model"))
    for folder in candidates:
        if folder and os.path.isdir(folder):
            return Path(folder)
    return None


def motion_module_files(webui: WebUI) -> List[str]:
    folder = motion_module_folder(webui)
    if folder is None:
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".ckpt", ".safetensors", ".pth", ".pt"))


@pytest.fixture(scope="session")
def motion_module() -> str:
    return os.environ.get("I4VGEN_WEBUI_MOTION_MODULE", MOTION_MODULE)


class Payloads:
    """Request bodies with the suite's tiny settings. ``animatediff`` / ``i4vgen``: False (not in the request), True
    (enabled with the defaults below) or a dict of overrides; ``alwayson`` adds or replaces script entries."""

    def __init__(self, motion_module: str):
        self.motion_module = motion_module

    def animatediff_args(self, **overrides: Any) -> Dict[str, Any]:
        # AnimateDiff's batch_size is its context size: equal to video_length, or it renders 16 frames.
        args = dict(model=self.motion_module, enable=True, video_length=FRAMES, batch_size=FRAMES, fps=8,
                    loop_number=0, closed_loop="N", format=["GIF"])
        args.update(overrides)
        return args

    def i4vgen_args(self, **overrides: Any) -> Dict[str, Any]:
        args = dict(enable=True, candidates=CANDIDATES, ranker="none")
        args.update(overrides)
        return args

    def _scripts(self, animatediff: Any, i4vgen: Any, alwayson: Optional[dict]) -> Dict[str, Any]:
        scripts: Dict[str, Any] = {}
        if animatediff is not False:
            scripts["AnimateDiff"] = {"args": [self.animatediff_args(**(animatediff if isinstance(animatediff, dict) else {}))]}
        if i4vgen is not False:
            scripts["I4VGen"] = {"args": [self.i4vgen_args(**(i4vgen if isinstance(i4vgen, dict) else {}))]}
        scripts.update(alwayson or {})
        return scripts

    def txt2img(self, *, animatediff: Any = True, i4vgen: Any = False, alwayson: Optional[dict] = None,
                **fields: Any) -> Dict[str, Any]:
        payload = dict(prompt=PROMPT, negative_prompt="", seed=SEED, steps=STEPS, width=SIZE, height=SIZE,
                       cfg_scale=7, sampler_name="Euler a", n_iter=1, batch_size=1, save_images=False)
        payload.update(fields)
        payload["alwayson_scripts"] = self._scripts(animatediff, i4vgen, alwayson)
        return payload

    def img2img(self, init_image_b64: str, **kwargs: Any) -> Dict[str, Any]:
        payload = self.txt2img(**kwargs)
        payload.setdefault("denoising_strength", 0.75)
        payload["init_images"] = [init_image_b64]
        return payload


@pytest.fixture(scope="session")
def payload(motion_module: str) -> Payloads:
    return Payloads(motion_module)


def assert_video(job, *, frames: int = FRAMES, size: int = SIZE) -> bytes:
    """The job succeeded and its first image is a GIF of ``frames`` frames of size x size; returns the GIF."""
    assert job.status == 200, job
    assert job.gifs, f"no GIF in the answer: {job}"
    assert job.images[0] == job.gifs[0], "AnimateDiff's GIF is not the first image"
    count, sizes = gif_sizes(job.gifs[0])
    assert (count, sizes) == (frames, {(size, size)}), f"GIF has {count} frames of sizes {sizes}"
    return job.gifs[0]


@pytest.fixture(scope="session")
def plain_reference(webui: WebUI, payload: Payloads):
    """A plain AnimateDiff job, the first job of the session (job fixtures that run I4VGen request this one first):
    every later identical plain job must return these GIF bytes exactly."""
    job = webui.job("/sdapi/v1/txt2img", payload.txt2img())
    assert_video(job)
    return job


@pytest.fixture(scope="module")
def sdxl(webui) -> dict:
    """Selects the SDXL checkpoint the way a user does, in the settings, and puts the settings back afterwards.
    A request's ``override_settings`` would come too late: AnimateDiff checks its module against the loaded model in
    ``before_process``, before A1111 applies a request's checkpoint. The live previews use "Approx cheap" because the
    SDXL "Approx NN" model is a download, and this server is offline."""
    checkpoint = os.environ.get("I4VGEN_WEBUI_SDXL_CHECKPOINT")
    module = os.environ.get("I4VGEN_WEBUI_SDXL_MOTION_MODULE")
    if not checkpoint or not module:
        pytest.skip("I4VGEN_WEBUI_SDXL_CHECKPOINT / I4VGEN_WEBUI_SDXL_MOTION_MODULE are not set")
    _, models = webui.get("/sdapi/v1/sd-models")
    titles = [m.get("title") for m in models or []] + [m.get("model_name") for m in models or []]
    if checkpoint not in titles:
        pytest.skip(f"the server has no checkpoint {checkpoint!r}: {titles}")
    _, options = webui.get(OPTIONS)
    saved = {key: options[key] for key in ("sd_model_checkpoint", "show_progress_type")}

    def restore() -> None:
        status, body = webui.post(OPTIONS, saved)
        assert status == 200, body

    status, body = webui.post(OPTIONS, {"sd_model_checkpoint": checkpoint, "show_progress_type": "Approx cheap"})
    assert status == 200, body
    yield {"module": module, "restore": restore}
    restore()


def xl_job(webui: WebUI, payload: Payloads, sdxl: dict, *, module: Optional[str] = None,
           alwayson: Optional[dict] = None, n_iter: int = 1, **i4vgen: Any):
    """An I4VGen txt2img job at XL_SIZE on the ``sdxl`` fixture's checkpoint, with its motion module (or ``module``)."""
    body = payload.txt2img(i4vgen=i4vgen or True, animatediff={"model": module or sdxl["module"]}, width=XL_SIZE,
                           height=XL_SIZE, n_iter=n_iter, alwayson=alwayson)
    return webui.job("/sdapi/v1/txt2img", body)

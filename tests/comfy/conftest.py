"""The stand-in ComfyUI harness (tests/comfy/standin): a tiny SD1.5-configured model as the checkpoint's MODEL, ADE's
stand-in loader on a clone of it, text CONDITIONINGs, a tiny VAE, and the node pack loaded as ComfyUI loads it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"
REPO = HERE.parents[1]
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

collect_ignore_glob = ["standin/*"]

FRAMES, SIZE, STEPS, CANDIDATES = 6, 8, 4, 3  # latent 8x8 = 64x64 pixels


@pytest.fixture(autouse=True)
def clean_host_state():
    """A fresh interrupt flag, progress hook and loaded-model list around every test."""
    import comfy.model_management as mm
    import comfy.utils as utils
    from ade_standin import ade

    mm.interrupt_current_processing(False)
    utils.set_progress_bar_global_hook(None)
    for patcher in list(mm.current_loaded_models):
        patcher.unpatch_model()
    mm.current_loaded_models.clear()
    ade.sessions.clear()
    torch.set_num_threads(1)
    yield
    mm.interrupt_current_processing(False)
    utils.set_progress_bar_global_hook(None)


@pytest.fixture
def models() -> Dict[str, Any]:
    from ade_standin.ade import load_animatediff
    from comfy_tinymodel import TinyVAE, make_model, text_conditioning

    plain = make_model()
    return {"plain": plain, "video": load_animatediff(plain), "vae": TinyVAE(),
            "positive": text_conditioning("a corgi running"), "negative": text_conditioning("")}


def latent(frames: int = FRAMES, size: int = SIZE) -> Dict[str, torch.Tensor]:
    """``nodes.py:EmptyLatentImage`` with batch_size = frames."""
    return {"samples": torch.zeros((frames, 4, size, size))}


def widgets(**changes: Any) -> Dict[str, Any]:
    """The node's widget values: the table's defaults, tiny sizes."""
    from i4vgen_ext.comfy.inputs import setting_widgets

    values = {name: options.get("default") for name, (_kind, options) in setting_widgets().items()}
    values.update(seed=7, steps=STEPS, candidates=CANDIDATES)
    values.update(changes)
    return values


def run_node(models: Dict[str, Any], *, video_model: Any = None, latent_input: Any = None, vae: Any = "default",
             ranker: Any = None, anchor_image: Any = None, prompt: str = "a corgi running", **changes: Any):
    from i4vgen_ext.comfy.nodes import I4VGenSamplerAnimateDiff

    out = I4VGenSamplerAnimateDiff().sample(
        models["plain"], video_model if video_model is not None else models["video"], models["positive"],
        models["negative"], latent_input if latent_input is not None else latent(), prompt=prompt,
        vae=models["vae"] if vae == "default" else vae, ranker=ranker, anchor_image=anchor_image,
        **widgets(**changes))
    return out

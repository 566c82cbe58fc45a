"""Fixtures for the live ComfyUI suite: the server (env ``I4VGEN_COMFY_URL``; every test here is skipped when it is
not set), workflow builders from the example workflow (examples/i4vgen_animatediff_api.json) with tiny settings,
and the measured numbers (printed at the end of the run).

The server needs AnimateDiff-Evolved and this node pack (custom_nodes/<clone>), a checkpoint ``CHECKPOINT`` and a
motion model ``MOTION_MODEL``: ``python tests/comfy_api/build_models.py --comfy ComfyUI`` writes random full-size
ones."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from ..live_suite import answer, live_hooks, server_url
from .client import Comfy

URL_ENV = "I4VGEN_COMFY_URL"
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "i4vgen_animatediff_api.json"

# Tiny jobs for a 2-core CPU with full-size random SD1.5 + motion module weights.
PROMPT = "a red fox running through snow"
SEED = 1234
STEPS = 4
FRAMES = 8
SIZE = 64
CANDIDATES = 2
CHECKPOINT = os.environ.get("I4VGEN_COMFY_CHECKPOINT", "random-sd15.safetensors")
MOTION_MODEL = os.environ.get("I4VGEN_COMFY_MOTION_MODEL", "mm_sd_v15_v2.safetensors")
SAMPLER, VIDEO_SAVE, FRAME_SAVE, CANDIDATE_SAVE = "7", "9", "11", "10"

MEASURED: Dict[str, Any] = {}


pytest_collection_modifyitems, pytest_terminal_summary, measured = live_hooks(HERE, URL_ENV, "ComfyUI", MEASURED)


@pytest.fixture(scope="session")
def comfy() -> Comfy:
    url = server_url(URL_ENV, "ComfyUI")
    client = Comfy(url)
    status, info = answer(client, "/object_info", URL_ENV, url)
    assert status == 200, f"GET /object_info: HTTP {status}"
    missing = {"I4VGenSamplerAnimateDiff", "I4VGenRankerLoader", "ADE_AnimateDiffLoaderGen1"} - set(info)
    assert not missing, f"the server lacks the nodes {sorted(missing)} (install ADE and this pack in custom_nodes)"
    client.object_info = info
    return client


def i4vgen_workflow(*, seed: int = SEED, frames: int = FRAMES, prompt_note: str = "", context: Optional[tuple] = None,
                    iterations: int = 1, anchor_color: Optional[int] = None, video_model: str = "ade",
                    prefix: str = "i4vgen_live", **settings: Any) -> Dict[str, Any]:
    """The example workflow at tiny sizes, ranker none, frames saved as PNGs as well. ``prompt_note`` changes only the
    ranker's text (unused with ranker none), so ComfyUI re-runs the sampler on the same inputs."""
    workflow = copy.deepcopy(json.loads(EXAMPLE.read_text()))
    workflow["1"]["inputs"]["ckpt_name"] = CHECKPOINT
    workflow["2"]["inputs"]["model_name"] = MOTION_MODEL
    workflow["3"]["inputs"]["text"] = PROMPT
    workflow["4"]["inputs"]["text"] = "blurry"
    workflow["5"]["inputs"].update(width=SIZE, height=SIZE, batch_size=frames)
    workflow["6"]["inputs"].update(ranker="none", ranker_file=workflow_auto(), ranker_fallback="error")
    sampler = workflow[SAMPLER]["inputs"]
    sampler.update(seed=seed, steps=STEPS, candidates=CANDIDATES, prompt=PROMPT + prompt_note)
    sampler.update(settings)
    workflow[VIDEO_SAVE]["inputs"]["filename_prefix"] = prefix
    workflow[CANDIDATE_SAVE]["inputs"]["filename_prefix"] = prefix + "_candidates"
    workflow[FRAME_SAVE] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    if context is not None:
        workflow["20"] = {"class_type": "ADE_StandardStaticContextOptions",
                          "inputs": {"context_length": context[0], "context_overlap": context[1]}}
        workflow["2"]["inputs"]["context_options"] = ["20", 0]
    if iterations > 1:
        workflow["21"] = {"class_type": "ADE_IterationOptsDefault", "inputs": {"iterations": iterations}}
        workflow["22"] = {"class_type": "ADE_AnimateDiffSamplingSettings",
                          "inputs": {"batch_offset": 0, "noise_type": "default", "seed_gen": "comfy",
                                     "seed_offset": 0, "iteration_opts": ["21", 0]}}
        workflow["2"]["inputs"]["sample_settings"] = ["22", 0]
    if anchor_color is not None:
        workflow["23"] = {"class_type": "EmptyImage",
                          "inputs": {"width": 96, "height": 80, "batch_size": 1, "color": anchor_color}}
        sampler["anchor_image"] = ["23", 0]
    if video_model == "checkpoint":
        sampler["video_model"] = ["1", 0]
    return workflow


def workflow_auto() -> str:
    from i4vgen_ext.comfy.ranking import AUTO

    return AUTO


def plain_workflow(*, seed: int = SEED, steps: int = STEPS, advanced: bool = False, video: bool = True,
                   batch: int = FRAMES, prefix: str = "plain_live") -> Dict[str, Any]:
    """A plain ADE text-to-video job on the same cached nodes (checkpoint, ADE loader, prompts): KSampler euler,
    or the equivalent KSamplerAdvanced (all steps, with noise) so that ComfyUI re-runs sampling on cached MODELs;
    ``video=False`` samples the checkpoint's MODEL (image mode, ``batch`` images)."""
    workflow = {k: v for k, v in i4vgen_workflow().items() if k in ("1", "2", "3", "4", "5")}
    workflow["5"]["inputs"]["batch_size"] = batch
    common = {"model": ["2", 0] if video else ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
              "latent_image": ["5", 0], "steps": steps, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal"}
    if advanced:
        workflow["30"] = {"class_type": "KSamplerAdvanced",
                          "inputs": dict(common, add_noise="enable", noise_seed=seed, start_at_step=0,
                                         end_at_step=10000, return_with_leftover_noise="disable")}
    else:
        workflow["30"] = {"class_type": "KSampler", "inputs": dict(common, seed=seed, denoise=1.0)}
    workflow["31"] = {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["1", 2]}}
    workflow["32"] = {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": prefix}}
    return workflow

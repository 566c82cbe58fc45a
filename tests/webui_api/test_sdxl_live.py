"""I4VGen on an SDXL checkpoint with an SDXL motion module on a live WebUI: txt2img, the anchor image, batch count 2,
HotShot-XL, and a plain job on the SD1.5 checkpoint afterwards unchanged. Needs an SDXL checkpoint on the server,
named by ``I4VGEN_WEBUI_SDXL_CHECKPOINT`` (its title in /sdapi/v1/sd-models), and an AnimateDiff SDXL or HotShot-XL
module, named by ``I4VGEN_WEBUI_SDXL_MOTION_MODULE``; skipped otherwise. ``build_models.py --sdxl`` writes both
(random-sdxl.safetensors, mm_sdxl_v10_beta_random.safetensors)."""
from __future__ import annotations

import pytest
from PIL import Image

from .client import encode_png
from .conftest import XL_SIZE, assert_video, motion_module_files, xl_job

TXT2IMG = "/sdapi/v1/txt2img"
HOTSHOT = "hotshotxl_random.safetensors"  # what build_models.py writes


def test_sdxl_txt2img(webui, payload, plain_reference, sdxl, measured):
    job = xl_job(webui, payload, sdxl)
    measured["sdxl_txt2img"] = {"status": job.status, "seconds": round(job.seconds, 1), "record": job.record}
    assert_video(job, size=XL_SIZE)
    assert job.record is not None and job.record["unet_calls"]["anchor"] > 0, job


def test_sdxl_anchor_image(webui, payload, plain_reference, sdxl, measured):
    image = Image.new("RGB", (XL_SIZE, XL_SIZE), (200, 120, 40))
    job = xl_job(webui, payload, sdxl, anchor_image=encode_png(image))
    measured["sdxl_anchor_image"] = {"status": job.status, "seconds": round(job.seconds, 1), "record": job.record}
    assert_video(job, size=XL_SIZE)
    assert job.record["anchor_image"].startswith(f"{XL_SIZE}x{XL_SIZE} sha256:"), job.record


def test_sdxl_batch_count_two(webui, payload, plain_reference, sdxl):
    job = xl_job(webui, payload, sdxl, n_iter=2)
    assert job.status == 200, job
    assert len(job.gifs) == 2, f"{len(job.gifs)} videos for batch count 2"


def test_sdxl_hotshot(webui, payload, plain_reference, sdxl):
    if HOTSHOT not in motion_module_files(webui):
        pytest.skip(f"the server has no {HOTSHOT}")
    job = xl_job(webui, payload, sdxl, module=HOTSHOT)
    assert_video(job, size=XL_SIZE)
    assert job.record is not None and job.record["unet_calls"]["anchor"] > 0, job


def test_plain_job_unchanged_after_sdxl(webui, payload, plain_reference, sdxl):
    sdxl["restore"]()
    job = webui.job(TXT2IMG, payload.txt2img())
    assert job.gifs == plain_reference.gifs, "a plain SD1.5 AnimateDiff job changed after I4VGen jobs on SDXL"

"""I4VGen with a Control-LoRA unit (sd-webui-controlnet's ControlLoRA type: Stability's SDXL control-lora layout,
tests/webui_api/control_lora.py) on an SDXL checkpoint on a live WebUI: a canny unit on a drawn image changes the
I4VGen video, and the same job without the unit is unchanged afterwards (ControlNet unbinds the LoRA from the SDXL
UNet). Needs the SDXL checkpoint and motion module of test_sdxl_live.py (``I4VGEN_WEBUI_SDXL_CHECKPOINT``,
``I4VGEN_WEBUI_SDXL_MOTION_MODULE``) and a Control-LoRA model in /controlnet/model_list (``build_models.py --sdxl``
writes one); skipped otherwise."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from .client import encode_png
from .conftest import XL_SIZE, assert_video, xl_job
from .test_controlnet_live import controlnet, error_message, pixels, unit

SD1_NAMES = ("sd14", "sd15", "sd16")  # scripts/enums.py StableDiffusionVersion.detect_from_model_name: an SD1.x model


@pytest.fixture(scope="module")
def control_lora(webui) -> str:
    status, models = webui.get("/controlnet/model_list")
    if status != 200:
        pytest.skip("sd-webui-controlnet is not installed (no /controlnet/model_list)")
    found = [name for name in models["model_list"] if "control-lora" in name.lower().replace("_", "-")
             and not any(sd1 in name.lower() for sd1 in SD1_NAMES)]
    if not found:
        pytest.skip(f"no SDXL Control-LoRA model installed: {models['model_list']}")
    return found[0]


def drawn_image() -> Image.Image:
    image = Image.new("RGB", (XL_SIZE, XL_SIZE), "black")
    ImageDraw.Draw(image).ellipse((24, 20, 100, 108), outline="white", width=4)
    return image


@pytest.fixture(scope="module")
def without_unit(webui, payload, plain_reference, sdxl, control_lora):
    job = xl_job(webui, payload, sdxl)
    assert_video(job, size=XL_SIZE)
    return job


def test_control_lora_unit_changes_the_video(webui, payload, sdxl, control_lora, without_unit, measured):
    control = controlnet(unit(control_lora, image=encode_png(drawn_image()), processor_res=XL_SIZE))
    job = xl_job(webui, payload, sdxl, alwayson=control)
    measured["control_lora_sdxl"] = {"model": control_lora, "status": job.status, "seconds": round(job.seconds, 1),
                                     "record": job.record if job.status == 200 else error_message(job)}
    assert_video(job, size=XL_SIZE)
    assert job.record is not None and job.record["unet_calls"]["anchor"] > 0, job
    assert pixels(job) != pixels(without_unit), "the Control-LoRA unit had no effect on the I4VGen video"


def test_sdxl_job_unchanged_after_control_lora(webui, payload, sdxl, control_lora, without_unit):
    job = xl_job(webui, payload, sdxl)
    assert job.gifs == without_unit.gifs, "an SDXL I4VGen job changed after a job with a Control-LoRA unit"

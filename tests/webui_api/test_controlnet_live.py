"""I4VGen with sd-webui-controlnet on a live WebUI over /sdapi/v1/txt2img: one canny unit with one control image, with
one control image per frame (a batch folder, and AnimateDiff's control video), two units with guidance end 0.5, a unit
that is not a plain hint refused by name, and plain jobs before and after byte-identical. Per-frame controls are
folders on the server's disk, so those tests need the server on this machine."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from .client import encode_png, gif_frames
from .conftest import FRAMES, SIZE, STEPS, assert_video, motion_module_folder

TXT2IMG = "/sdapi/v1/txt2img"
UNITS = 3  # sd-webui-controlnet's default unit count; API clients send every unit (AnimateDiff reads them as dicts)


def pixels(job) -> list:
    return [frame.tobytes() for frame in gif_frames(job.gifs[0])]


def error_message(job) -> str:
    body = job.body if isinstance(job.body, dict) else {}
    return str(body.get("errors") or body.get("detail") or job.text())


def control_frame(shift: int) -> Image.Image:
    frame = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(frame).rectangle((8 + 3 * shift, 16, 30 + 3 * shift, 47), outline="white", width=3)
    return frame


@pytest.fixture(scope="module")
def canny(webui) -> str:
    status, models = webui.get("/controlnet/model_list")
    if status != 200:
        pytest.skip("sd-webui-controlnet is not installed (no /controlnet/model_list)")
    found = [name for name in models["model_list"] if "canny" in name.lower() and "sd15" in name.lower()]
    if not found:  # the suite's checkpoint is SD1.5 (an SDXL canny model or Control-LoRA does not fit it)
        pytest.skip(f"no SD1.5 canny ControlNet model installed: {models['model_list']}")
    return found[0]


@pytest.fixture(scope="module")
def frames_folder(webui, tmp_path_factory) -> Path:
    if motion_module_folder(webui) is None:
        pytest.skip("per-frame controls are a folder on the server's disk: the server is elsewhere")
    folder = tmp_path_factory.mktemp("control_frames")
    for index in range(FRAMES):
        control_frame(index).save(folder / f"{index:05d}.png")
    return folder


def unit(canny: str, **fields) -> dict:
    values = {"enabled": True, "module": "canny", "model": canny, "weight": 1.0, "resize_mode": "Crop and Resize",
              "processor_res": SIZE, "threshold_a": 100, "threshold_b": 200, "pixel_perfect": False,
              "control_mode": "Balanced", "save_detected_map": False}
    values.update(fields)
    return values


def controlnet(*units: dict) -> dict:
    return {"ControlNet": {"args": list(units) + [{"enabled": False}] * (UNITS - len(units))}}


@pytest.fixture(scope="module")
def without_unit(webui, payload, plain_reference):
    """The I4VGen job every ControlNet job is compared with (same settings, no unit)."""
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True))
    assert_video(job)
    return job


def assert_controlled(job, without_unit, measured, key):
    measured[key] = {"status": job.status, "seconds": round(job.seconds, 1),
                     "record": job.record if job.status == 200 else error_message(job)}
    assert_video(job)
    assert job.record is not None and job.record.get("unet_calls"), job
    assert pixels(job) != pixels(without_unit), "the ControlNet unit had no effect on the I4VGen video"


def test_one_control_image(webui, payload, canny, without_unit, measured):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, image=encode_png(control_frame(0))))))
    assert_controlled(job, without_unit, measured, "controlnet_one_image")


def test_one_control_image_per_frame_from_a_batch_folder(webui, payload, canny, without_unit, frames_folder, measured):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, batch_images=str(frames_folder)))))
    assert_controlled(job, without_unit, measured, "controlnet_batch_folder")


def test_animatediffs_control_video(webui, payload, canny, without_unit, frames_folder, measured):
    """A unit without an image takes AnimateDiff's control video (``video_path``: its frames, one per video frame)."""
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, animatediff={"video_path": str(frames_folder)},
                                             alwayson=controlnet(unit(canny))))
    assert_controlled(job, without_unit, measured, "controlnet_animatediff_video")


# Preprocessors that need no annotator download (this server is offline): the others run the same code path.
@pytest.mark.parametrize("module", ["none", "tile_resample", "scribble_xdog", "lineart_standard"])
def test_image_preprocessors(webui, payload, canny, without_unit, module, measured):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, module=module, image=encode_png(control_frame(0))))))
    assert_controlled(job, without_unit, measured, f"controlnet_{module}")


def test_pixel_perfect_low_vram_resize_and_fill_prompt_first(webui, payload, canny, without_unit, measured):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, image=encode_png(control_frame(0).resize((SIZE, SIZE // 2))), pixel_perfect=True, low_vram=True,
             resize_mode="Resize and Fill", control_mode="My prompt is more important"))))
    assert_controlled(job, without_unit, measured, "controlnet_unit_options")


def test_hires_fix_with_a_unit(webui, payload, canny, measured):
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5)
    plain = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, **hires))
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, image=encode_png(control_frame(0)))), **hires))
    measured["controlnet_hires"] = {"status": job.status, "seconds": round(job.seconds, 1),
                                    "record": job.record if job.status == 200 else error_message(job)}
    assert_video(job, size=2 * SIZE)
    assert job.record is not None and job.record.get("unet_calls"), job
    assert pixels(job) != pixels(plain), "the ControlNet unit had no effect on the Hires. fix I4VGen video"


def test_two_units_with_guidance_end(webui, payload, canny, frames_folder, measured):
    """One image unit and one per-frame unit with guidance end 0.5, at 6 steps (a plain job then leaves the last
    step uncontrolled: A1111's counters give it 4/6): differs from guidance end 1 and from no units."""
    steps = STEPS + 2

    def two_units(end: float):
        return controlnet(unit(canny, image=encode_png(control_frame(4)), weight=0.7),
                          unit(canny, batch_images=str(frames_folder), guidance_end=end,
                               control_mode="ControlNet is more important"))

    half = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, steps=steps, alwayson=two_units(0.5)))
    full = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, steps=steps, alwayson=two_units(1.0)))
    bare = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, steps=steps))
    for key, job in (("guidance_end_0.5", half), ("guidance_end_1", full), ("no_units_6_steps", bare)):
        measured[f"controlnet_two_units_{key}"] = {"status": job.status, "seconds": round(job.seconds, 1)}
        assert_video(job)
        assert job.record is not None and job.record.get("unet_calls"), job
    assert pixels(half) != pixels(bare), "two units had no effect"
    assert pixels(half) != pixels(full), "guidance end 0.5 controlled the same steps as guidance end 1"


@pytest.mark.parametrize("module,model,word", [("reference_only", "None", "reference"),
                                               ("inpaint_only", None, "inpaint")])
def test_a_unit_that_is_not_a_plain_hint_is_refused_by_name(webui, payload, canny, module, model, word, measured):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, alwayson=controlnet(
        unit(canny, module=module, model=model or canny, image=encode_png(control_frame(0))))))
    message = error_message(job)
    measured[f"controlnet_refused_{module}"] = {"status": job.status, "message": message}
    assert job.status >= 400, job
    assert "I4VGen" in message and "ControlNet unit 0" in message and word in message, message


def test_plain_job_unchanged_after_controlnet(webui, payload, plain_reference):
    job = webui.job(TXT2IMG, payload.txt2img())
    assert job.gifs == plain_reference.gifs, "a plain AnimateDiff job changed after I4VGen jobs with ControlNet"

"""I4VGen with sd-webui-controlnet (the 1.1.455 stand-in in tests/host/standin/extensions/sd-webui-controlnet) and
AnimateDiff, with ControlNet's script before I4VGen's ("cn_first") and after it ("cn_last"): I4VGen runs inside
ControlNet's ``p.sample`` wrapper, the candidates get frame 0's control, the video stages AnimateDiff's per-frame
rows, EVS's image steps their chunk's rows, guidance start/end sits on the job's step grid, and what is not a plain
hint is refused by name before any UNet call with no ControlNet hook left behind."""
from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from i4vgen_ext.errors import Refusal

from .conftest import ad_args, assert_restored, make_p, run, ui_args

ORDERS = ["cn_first", "cn_last"]
CANNY = "control_v11p_sd15_canny [tiny]"
DEPTH = "control_v11f1p_sd15_depth [tiny]"


def hook_module():
    return sys.modules["scripts.hook"]


@pytest.fixture(autouse=True)
def fresh_calls():
    hook_module().CALLS.clear()
    yield
    hook_module().CALLS.clear()


def grey(value: int, size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


def frame_value(k: int) -> int:
    return 20 + 25 * k


def frame_folder(tmp_path, frames: int):
    """One control image per frame, frame k a flat grey of ``frame_value(k)``: its hint row's mean names the frame."""
    folder = tmp_path / "control"
    folder.mkdir()
    for k in range(frames):
        grey(frame_value(k)).save(folder / f"{k:03}.png")
    return str(folder)


def unit(**fields):
    """A panel unit; with ``batch_images`` one from the panel's batch tab (a folder of per-frame images)."""
    values = dict(enabled=True, module="none", model=CANNY, weight=1.0, image=grey(200), batch_images="")
    if "batch_images" in fields:
        values.update(image=None, input_mode="batch")
    values.update(fields)
    return values


def i4v(**named):
    return lambda host: ui_args(host, **named)


def job(host, tab, units=None, *, i4vgen=None, ad=None, api=False, **fields):
    args = i4vgen(host) if callable(i4vgen) else i4vgen
    return make_p(host, tab=tab, i4vgen=args, ad=ad or ad_args(batch_size=8), cn=units, api=api, **fields)


def gif_bytes(res) -> bytes:
    with open(res.images[0], "rb") as f:
        return f.read()


def calls_by_stage(host):
    """(stage text, motion-module calls, ControlNet's record) per UNet call: the hooked forward records each call
    just before the tiny UNet logs it."""
    calls = hook_module().CALLS
    from modules import errors

    assert not errors.reported
    assert len(calls) == len(host.model.unet_log), "a UNet call ran outside ControlNet's hooked forward"
    return [(text or "", mm, record) for (text, _, mm, _), record in zip(host.model.unet_log, calls)]


def unet_forward_is_plain(host) -> bool:
    unet = host.model.model.diffusion_model
    return getattr(unet.forward, "__func__", None) is type(unet).forward


def plain_video(host) -> bytes:
    """A plain AnimateDiff job (no I4VGen, no ControlNet unit) on the tab without ControlNet; its calls are not
    kept in the logs."""
    video = gif_bytes(run(make_p(host, i4vgen=ui_args(host, enable=False), ad=ad_args(batch_size=8))))
    host.model.unet_log.clear()
    hook_module().CALLS.clear()
    return video


@pytest.mark.parametrize("tab", ORDERS)
def test_one_control_image_runs_inside_controlnets_wrapper(host, stub, watch, tab):
    before = plain_video(host)
    p = job(host, tab, [unit()], i4vgen=i4v())
    original_sampler = p.sample
    res = run(p)
    calls = calls_by_stage(host)
    assert calls and all(record["marked"] for _, _, record in calls), "I4VGen ran outside ControlNet's process_sample"
    assert all(record["units"][0] == (False, [round(200 / 255, 4)]) for _, _, record in calls)
    stages = {text.split(" (")[0] for text, _, _ in calls}
    assert stages == {"I4VGen: anchor images", "I4VGen: NI-VSDS", "I4VGen: regeneration"}
    assert vars(p)["sample_before_CN_hack"] == original_sampler, "I4VGen's sampler was not handed back"
    assert_restored_with_controlnet(watch, p)
    assert "unet_calls" in json.loads(p.extra_generation_params["I4VGen"])
    assert unet_forward_is_plain(host)
    without_unit = gif_bytes(run(job(host, tab, [unit(enabled=False)], i4vgen=i4v())))
    assert gif_bytes(res) != without_unit, "the control changed nothing"
    assert plain_video(host) == before


def assert_restored_with_controlnet(watch, p):
    """``assert_restored``, but ``p.sample`` is ControlNet's wrapper (A1111 never takes it off ``p``)."""
    sample = vars(p).pop("sample")
    try:
        assert_restored(watch, p)
    finally:
        p.sample = sample
    assert sample.__qualname__.endswith("hook.<locals>.process_sample")


@pytest.mark.parametrize("tab,api", [("cn_first", False), ("cn_last", True)])
def test_control_per_frame_rows_per_stage(host, stub, tmp_path, tab, api):
    """A batch folder of 8 control frames, AnimateDiff context 4 (two windows a call), mode i4vgen+evs: the
    candidates see frame 0's row only; video calls (NI-VSDS, regeneration, EVS's video block) see their window's
    frames, cond rows then uncond rows; EVS's image steps see their chunk's frames."""
    folder = frame_folder(tmp_path, 8)
    units = [unit(batch_images=folder)] if not api else [  # API clients send every unit (AnimateDiff reads dicts)
        {"enabled": True, "module": "none", "model": CANNY, "batch_images": folder}] + [{"enabled": False}] * 2
    p = job(host, tab, units, i4vgen=i4v(mode="i4vgen+evs"), ad=ad_args(batch_size=4, video_length=8, overlap=1),
            api=api, steps=5)
    run(p)
    means = {k: round(frame_value(k) / 255, 4) for k in range(8)}
    seen = set()
    for text, mm, record in calls_by_stage(host):
        stopped, rows = record["units"][0]
        assert not stopped and record["marked"]
        frames = [next(k for k, m in means.items() if abs(m - r) < 1e-3) for r in rows]
        if "anchor" in text:
            assert mm == 0 and frames == [0], text
        elif mm == 0:  # EVS image steps: chunks of the context size, cond rows then uncond rows
            assert text.startswith("I4VGen: EVS image steps") and frames[:4] == frames[4:] and len(frames) == 8
            assert frames[:4] in ([0, 1, 2, 3], [4, 5, 6, 7]), frames
        else:  # AnimateDiff's window: 4 frames, then the same frames' uncond rows
            assert len(frames) == 8 and frames[:4] == frames[4:] and len(set(frames[:4])) == 4, (text, frames)
        seen.add(text.split(" (")[0])
    assert {"I4VGen: anchor images", "I4VGen: NI-VSDS", "I4VGen: regeneration", "I4VGen: EVS image steps",
            "I4VGen: EVS video block"} <= seen
    assert unet_forward_is_plain(host)


def stopped_flags(host, unit_index, stage_word):
    return [record["units"][unit_index][0] for text, _, record in calls_by_stage(host) if stage_word in text]


@pytest.mark.parametrize("tab", ORDERS)
def test_guidance_end_covers_the_same_steps_as_a_plain_job(host, stub, tmp_path, tab):
    """Two units (one image; one image per frame with guidance end 0.5), 8 steps, regeneration over the last 4: the
    plain AnimateDiff + ControlNet job controls steps 0-5 with the second unit; I4VGen's candidates do the same,
    NI-VSDS (steps 0..K-1) and regeneration (steps 4..7) follow the same grid."""
    folder = frame_folder(tmp_path, 8)
    units = [unit(), unit(batch_images=folder, model=DEPTH, guidance_end=0.5)]
    run(job(host, tab, units, i4vgen=ui_args(host, enable=False), steps=8))
    plain = stopped_flags(host, 1, "")
    assert plain == [False] * 6 + [True] * 2  # state fractions 0, 0, 1/8 .. 6/8: stopped above 0.5
    host.model.unet_log.clear()
    hook_module().CALLS.clear()
    p = job(host, tab, units, i4vgen=i4v(regen_strength=0.5), steps=8)
    run(p)
    calls = json.loads(p.extra_generation_params["I4VGen"])["unet_calls"]
    assert stopped_flags(host, 1, "anchor") == plain
    assert stopped_flags(host, 1, "NI-VSDS") == plain[:calls["nivsds"]]
    assert stopped_flags(host, 1, "regeneration") == plain[8 - calls["regeneration"]:] == [False, False, True, True]
    assert not any(stopped_flags(host, 0, ""))


def test_weights_modes_low_vram_and_hires(host, stub, tmp_path):
    """Several units with a weight, "ControlNet is more important", low VRAM, and Hires. fix: the hires pass (the
    host's, motion module in) uses the hires control rows, one per frame."""
    folder = frame_folder(tmp_path, 8)
    units = [unit(weight=0.5, control_mode="ControlNet is more important", low_vram=True),
             unit(batch_images=folder, module="invert", model=DEPTH)]
    p = job(host, "cn_last", units, i4vgen=i4v(), enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
            hr_second_pass_steps=2, denoising_strength=0.5)
    res = run(p)
    with Image.open(res.images[0]) as gif:
        assert gif.size == (128, 128) and gif.n_frames == 8
    hires = [record for text, _, record in calls_by_stage(host) if record["batch"] == 16 and "I4VGen" not in text]
    assert len(hires) == 2 and all(len(r["units"][1][1]) == 16 for r in hires)
    assert unet_forward_is_plain(host)


@pytest.mark.parametrize("tab", ORDERS)
@pytest.mark.parametrize("module,model,word", [
    ("inpaint_only", CANNY, "inpaint"),
    ("reference_only", "None", "reference"),
    ("ip-adapter_clip_sd15", "ip-adapter_sd15 [tiny]", "IP-Adapter"),
    ("none", "control_sd15_sparsectrl_rgb [tiny]", "SparseCtrl"),
    ("none", "mystery_model [tiny]", "IPAdapter model"),  # by the loaded model's type, at the sampling step
    ("none", "motion_hint [tiny]", "SparseCtrl model"),
])
def test_a_unit_that_is_not_a_plain_hint_is_refused_by_name(host, stub, tab, module, model, word):
    before = plain_video(host)
    p = job(host, tab, [unit(), unit(module=module, model=model)], i4vgen=i4v())
    with pytest.raises(Refusal, match=f"ControlNet unit 1.*{word}"):
        run(p)
    assert host.model.unet_log == [] and hook_module().CALLS == []
    assert unet_forward_is_plain(host), "ControlNet's hook was left on the UNet"
    from modules import script_callbacks

    assert not any("guidance_schedule_handler" in getattr(c, "__name__", "")
                   for c in script_callbacks.callbacks["cfg_denoiser"])
    assert plain_video(host) == before


def test_a_control_with_the_wrong_number_of_frames_is_refused(host, stub, tmp_path):
    """Per-frame controls of a length ControlNet cannot pair with the frames (here: a list ControlNet made for a
    unit I4VGen does not know) are refused before any UNet call."""
    from i4vgen_ext.webui.control import JobControl

    class Param:
        control_model_type = type("T", (), {"name": "ControlNet"})()
        preprocessor = {"name": "none"}
        control_model = None
        hr_hint_cond = None

        def __init__(self, rows):
            import torch

            self.hint_cond = torch.zeros(rows, 3, 8, 8)

    for rows, ok in ((1, True), (8, True), (16, True), (5, False), (24, False)):
        control = JobControl([Param(rows)], frames=8)
        if ok:
            control.check()
        else:
            with pytest.raises(Refusal, match=f"{rows} control images for a video of 8 frames"):
                control.check()


def test_api_units_reach_animatediff_as_units_and_a_failed_animatediff_setup_is_refused(host, stub, monkeypatch):
    """AnimateDiff a88e889 returns the API's dict units unconverted and its ``set_p`` fails on them; I4VGen's
    ``setup`` hands them over as ControlNet's units first. If AnimateDiff's setup fails anyway, I4VGen refuses."""
    from scripts.animatediff_ui import AnimateDiffProcess
    from scripts.external_code import ControlNetUnit

    units = [unit(image=None)] + [{"enabled": False}] * 2
    units[0]["image"] = grey(90)
    p = job(host, "cn_last", units, i4vgen={"enable": True, "candidates": 2}, api=True)
    cn_script = host.script("cn_last", "ControlNet")
    assert all(isinstance(u, ControlNetUnit) for u in p.script_args[cn_script.args_from:cn_script.args_to])

    def broken_set_p(self, p):
        raise AttributeError("'dict' object has no attribute 'enabled'")

    monkeypatch.setattr(AnimateDiffProcess, "set_p", broken_set_p)
    p = job(host, "cn_last", units, i4vgen={"enable": True, "candidates": 2}, api=True)
    with pytest.raises(Refusal, match="AnimateDiff's own setup of this job failed"):
        run(p)
    assert host.model.unet_log == [] and unet_forward_is_plain(host)

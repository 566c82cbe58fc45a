"""I4VGen driven through the stand-in host's real hook order with a tiny model: what runs in which stage, what the
host looks like afterwards (success, error, interrupt, skip), progress, LoRA, refusals."""
from __future__ import annotations

import json

import pytest
import torch

from i4vgen_ext.webui import batch as i4vgen_batch
from i4vgen_ext.webui import job as i4vgen_job
from i4vgen_ext.webui import ranking

from .conftest import ad_args, assert_restored, make_p, run, run_stopped, stage_calls, trigger_in


def i4v(candidates=3, anchor_index=-1, ranker="imagereward", fallback="error", regen=1.0, fraction=0.6,
        return_candidates=True, enable=True):
    return [enable, "official", candidates, fraction, "official", regen, ranker, "", fallback, anchor_index, return_candidates]


def test_full_job_stages_and_outputs(host, stub, watch):
    p = make_p(host, i4vgen=i4v(candidates=3), ad=ad_args(batch_size=8))
    res = run(p)
    model = host.model
    anchors, nivsds, regen = (stage_calls(model, s) for s in ("anchors", "ni-vsds", "regeneration"))
    assert len(anchors) == 4 and all(batch == 6 and mm == 0 for _, batch, mm, _ in anchors)  # 3 cond + 3 uncond
    assert len(nivsds) == 3 and all(batch == 16 and mm > 0 for _, batch, mm, _ in nivsds)  # K = int(4*0.6)+1
    assert len(regen) == 4 and all(batch == 16 and mm > 0 for _, batch, mm, _ in regen)
    assert len(model.unet_log) == 11
    assert stub.calls == 1
    assert_restored(watch, p)
    assert res.images[0].endswith(".gif")  # AnimateDiff's own output, then the candidates
    assert len(res.images) == 1 + 3 and "candidate" in res.infotexts[-1]
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["unet_calls"] == {"anchor": 4, "nivsds": 3, "regeneration": 4, "total": 11}
    assert record["ranked_by"] == "imagereward" and 0 <= record["chosen_anchor"] < 3


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_other_sampler_families(host, stub, watch, sampler):
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8), sampler_name=sampler)
    run(p)
    assert stage_calls(host.model, "anchors") and stage_calls(host.model, "ni-vsds")
    assert all(mm == 0 for _, _, mm, _ in stage_calls(host.model, "anchors"))
    assert_restored(watch, p)
    assert type(p.sampler).__name__ == ("CompVisSampler" if sampler == "DDIM" else "KDiffusionSampler")


@pytest.mark.parametrize("regen,expected", [(1.0, 4), (0.5, 2)])
def test_ddim_regeneration_runs_every_step(host, stub, watch, regen, expected):
    """A1111's DDIM img2img noises to timesteps[t_enc] but evaluates only t_enc - 1 steps (none for n_re <= 2,
    seen on the real host); regeneration with DDIM-family samplers therefore runs the method's own DDIM loop."""
    p = make_p(host, i4vgen=i4v(candidates=2, regen=regen), ad=ad_args(batch_size=8), sampler_name="DDIM")
    run(p)
    regen_calls = stage_calls(host.model, "regeneration")
    assert len(regen_calls) == expected and all(mm > 0 for _, _, mm, _ in regen_calls)
    assert json.loads(p.extra_generation_params["I4VGen"])["unet_calls"]["regeneration"] == expected
    assert_restored(watch, p)


def test_n_differs_from_f_chunks_and_context_windows(host, stub, watch):
    """N = 5 candidates in chunks of the context size 4; F = 6 frames > C = 4, so AnimateDiff's context windows run
    in NI-VSDS and regeneration (supported, not refused)."""
    from motion_module import TemporalCounter
    from scripts.animatediff_infv2v import AnimateDiffInfV2V

    TemporalCounter.frames_seen.clear()
    AnimateDiffInfV2V.windows_seen.clear()
    p = make_p(host, i4vgen=i4v(candidates=5), ad=ad_args(batch_size=4, video_length=6, overlap=1))
    res = run(p)
    anchors = stage_calls(host.model, "anchors")
    assert sorted(batch for _, batch, _, _ in anchors) == [2] * 4 + [8] * 4  # chunks of 4 and 1 candidates
    assert all(len(w) == 4 for w in AnimateDiffInfV2V.windows_seen) and len(AnimateDiffInfV2V.windows_seen) >= 2
    assert set(TemporalCounter.frames_seen) == {4}
    assert all(batch == 8 for _, batch, _, _ in stage_calls(host.model, "ni-vsds"))  # one window: 4 cond + 4 uncond
    assert_restored(watch, p)
    assert len(res.images) == 1 + 5


def test_progress_counts_add_up(host, stub):
    from modules import shared

    p = make_p(host, i4vgen=i4v(candidates=5), ad=ad_args(batch_size=4, video_length=4), n_iter=2)
    run(p)
    chunks = 2  # 5 candidates, context size 4
    assert shared.state.job_count == 2 * (chunks + 3)
    assert shared.state.job_no == shared.state.job_count
    assert shared.state.textinfo is None  # the job text is handed back


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_upscales_the_i4vgen_video(host, stub, watch, upscaler):
    """Hires. fix runs after I4VGen's video as after AnimateDiff's: every frame upscaled and refined with the motion
    module in (the host's second pass, not counted in I4VGen's record); the video comes out at the new size."""
    from modules import shared
    from PIL import Image

    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8), enable_hr=True, hr_scale=2.0,
               hr_upscaler=upscaler, hr_second_pass_steps=2, denoising_strength=0.5)
    res = run(p)
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["unet_calls"] == {"anchor": 4, "nivsds": 3, "regeneration": 4, "total": 11}
    first_pass = len(stage_calls(host.model, "anchors")) + 3 + 4
    hires = host.model.unet_log[first_pass:]
    assert len(hires) == 2 and all(batch == 16 and mm > 0 for _, batch, mm, _ in hires)  # 8 frames, cond + uncond
    with Image.open(res.images[0]) as gif:
        assert gif.size == (128, 128) and gif.n_frames == 8
    assert p.denoising_strength == 0.5 and not p.is_hr_pass
    assert shared.state.job_count == shared.state.job_no == 1 + 3 + 1  # anchor chunk, ranking, NI-VSDS, regen, hires
    assert_restored(watch, p)


def test_hires_fix_keeps_an_interrupted_video_as_it_is(host, stub, monkeypatch):
    trigger_in(monkeypatch, host, stub, "ni-vsds", "interrupt")
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8), enable_hr=True, hr_upscaler="Latent")
    run_stopped(p, "interrupt")
    assert all(mm > 0 or "anchor" in (text or "") for text, _, mm, _ in host.model.unet_log)
    assert not any(batch == 16 and text is None for text, batch, _, _ in host.model.unet_log)


def test_prompt_travel_anchors_take_frame_0_video_stages_take_every_frame(host, stub, watch):
    """AnimateDiff's prompt travel: the candidates are made and ranked with frame 0's prompt; NI-VSDS and
    regeneration get AnimateDiff's per-frame conds (key frames as written, frames between them interpolated)."""
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8),
               prompt="a corgi\n0: a red ball\n4: a blue ball\non the beach")
    run(p)
    model = host.model
    frame0, frame4 = (model.get_learned_conditioning([f"a corgi, {ball}, on the beach"])[0]
                      for ball in ("a red ball", "a blue ball"))
    calls = list(zip(model.unet_log, model.context_log))
    anchors = [context for (text, *_), context in calls if text.startswith("I4VGen: anchor")]
    video = [context for (text, *_), context in calls if text.startswith(("I4VGen: NI-VSDS", "I4VGen: regeneration"))]
    assert len(anchors) == 4 and len(video) == 3 + 4
    assert all(torch.equal(context[i], frame0) for context in anchors for i in range(2))  # rows: 2 cond, 2 uncond
    for context in video:  # rows: 8 frames' conds, then 8 unconds
        assert torch.allclose(context[0], frame0) and torch.allclose(context[4], frame4)
        assert not torch.allclose(context[2], frame0) and not torch.allclose(context[2], frame4)
    assert json.loads(p.extra_generation_params["I4VGen"])["unet_calls"]["total"] == 11
    assert_restored(watch, p)


def test_lora_reaches_the_anchor_stage(host, stub):
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8), prompt="a corgi <lora:tinylora:0.7>")
    run(p)
    anchors = stage_calls(host.model, "anchors")
    assert anchors and all(lora == {"tinylora": 0.7} for _, _, _, lora in anchors)
    with_lora = json.loads(p.extra_generation_params["I4VGen"])
    assert with_lora["unet_calls"]["anchor"] == 4


def test_manual_anchor_index_skips_ranking(host, stub):
    p = make_p(host, i4vgen=i4v(candidates=3, anchor_index=2), ad=ad_args(batch_size=8))
    run(p)
    assert stub.calls == 0
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["chosen_anchor"] == 2 and record["ranked_by"] == "manual"


def test_candidate_noise_is_the_host_noise_of_seed_plus_k(host):
    from modules import rng

    p = make_p(host, i4vgen=i4v(), ad=ad_args())
    p.seeds, p.subseeds = [100, 101], [7, 8]
    rngs = i4vgen_batch.candidate_rngs(p, 5, 2)
    noise = torch.cat([r.next() for r in rngs])
    expected = rng.ImageRNG((4, 8, 8), [100 + k for k in range(5)]).next()
    assert torch.equal(noise, expected)


def test_same_seed_same_video_and_seed_matters(host, stub):
    first = run(make_p(host, i4vgen=i4v(candidates=2, return_candidates=False), ad=ad_args(batch_size=8)))
    second = run(make_p(host, i4vgen=i4v(candidates=2, return_candidates=False), ad=ad_args(batch_size=8)))
    other = run(make_p(host, i4vgen=i4v(candidates=2, return_candidates=False), ad=ad_args(batch_size=8), seed=99))
    gif = lambda res: open(res.images[0], "rb").read()  # noqa: E731
    assert gif(first) == gif(second) != gif(other)


# Untouched jobs -------------------------------------------------------------------------------------------------------
def frames_of(res):
    return [list(image.getdata()) for image in res.images if not isinstance(image, str)]


@pytest.mark.parametrize("case", ["animatediff_off", "animatediff_missing"])
def test_without_animatediff_the_job_is_untouched(host, stub, monkeypatch, case):
    called = []
    monkeypatch.setattr(i4vgen_job, "sample_batch", lambda *a: called.append(a))
    tab = "no_ad" if case == "animatediff_missing" else "txt2img"
    ad = None if tab == "no_ad" else ad_args(enable=False)
    baseline = run(make_p(host, i4vgen=i4v(enable=False), ad=ad, tab=tab, batch_size=2))
    log_baseline = list(host.model.unet_log)
    host.model.unet_log.clear()
    p = make_p(host, i4vgen=i4v(), ad=ad, tab=tab, batch_size=2)
    res = run(p)
    assert not called and "sample" not in vars(p) and "I4VGen" not in p.extra_generation_params
    assert frames_of(res) == frames_of(baseline) and len(host.model.unet_log) == len(log_baseline)
    assert "AnimateDiff is not installed or not enabled" in res.comments


def test_disabled_i4vgen_leaves_animatediff_job_alone(host, monkeypatch):
    called = []
    monkeypatch.setattr(i4vgen_job, "sample_batch", lambda *a: called.append(a))
    p = make_p(host, i4vgen=i4v(enable=False), ad=ad_args(batch_size=8))
    res = run(p)
    assert not called and "I4VGen" not in p.extra_generation_params and res.images[0].endswith(".gif")
    assert len(host.model.unet_log) == 4 and all(mm > 0 for _, _, mm, _ in host.model.unet_log)


# Refusals: a clear error before any UNet call --------------------------------------------------------------------------
@pytest.mark.parametrize("case, expected", [
    ("img2img_mask", "inpainting"),
    ("img2img_last_frame", "last frame"),
    ("img2img_latent_power", "latent_power"),
    ("img2img_mode_evs", "init image is the anchor"),
    ("forge", "Forge is not supported"),
    ("freeinit", "FreeInit"),
    ("lcm_sampler", "LCM sampler"),
    ("sd2_checkpoint", "SD1.5-family or SDXL checkpoint"),
    ("v_prediction", "v-prediction"),
    ("refiner", "SDXL refiner is not supported"),
    ("xl_module_on_sd15", "motion module is not injected"),
    ("bad_arg", "candidates"),
    ("anchor_out_of_range", "anchor_index"),
])
def test_refusals_stop_before_sampling(host, stub, monkeypatch, case, expected):
    kwargs = dict(i4vgen=i4v(), ad=ad_args(batch_size=8))
    if case.startswith("img2img"):
        from .conftest import gradient

        kwargs.update(tab="img2img", init_images=[gradient(64, 64)])
        if case == "img2img_mask":
            kwargs["mask"] = gradient(64, 64, "L")
        if case == "img2img_last_frame":
            kwargs["ad"] = ad_args(batch_size=8, last_frame=gradient(64, 64))
        if case == "img2img_latent_power":
            kwargs["ad"] = ad_args(batch_size=8, latent_power=2)
        if case == "img2img_mode_evs":
            kwargs["i4vgen"] = {"enable": True, "mode": "evs"}
    if case == "forge":
        monkeypatch.setattr(i4vgen_job.shim, "is_forge", lambda: True)
    if case == "lcm_sampler":
        kwargs["sampler_name"] = "LCM"
    if case == "freeinit":
        kwargs["ad"] = ad_args(batch_size=8, freeinit_enable=True)
    if case == "sd2_checkpoint":
        monkeypatch.setattr(type(host.model), "is_sd2", True, raising=False)
    if case == "v_prediction":
        monkeypatch.setattr(type(host.model), "parameterization", "v")
    if case == "refiner":
        kwargs["refiner_checkpoint"] = "sd_xl_refiner_1.0"
    if case == "xl_module_on_sd15":  # AnimateDiff's own injection fails (its assert), so the module is not in
        kwargs["ad"] = ad_args(batch_size=8, model="mm_sdxl_v10_beta.ckpt")
    if case == "bad_arg":
        kwargs.update(i4vgen=[{"enable": True, "candidates": 0}], api=True, ad=ad_args(batch_size=8))
    if case == "anchor_out_of_range":
        kwargs["i4vgen"] = i4v(candidates=3, anchor_index=5)
    p = make_p(host, **kwargs)
    with pytest.raises(i4vgen_job.I4VGenError, match=expected):
        run(p)
    assert host.model.unet_log == []
    assert "sample" not in vars(p)


def test_missing_ranker_weights_follow_the_fallback(host, monkeypatch):
    from i4vgen_ext.rankers.base import NoneRanker, RankerLoadError

    def loader(name, *, fallback, **kwargs):
        if fallback == "error":
            raise RankerLoadError(name, "weights not found", searched=["/models/ImageReward"])
        return NoneRanker(), "none (fallback: weights not found)"

    monkeypatch.setattr(ranking, "default_loader", loader)
    p = make_p(host, i4vgen=i4v(), ad=ad_args(batch_size=8))
    with pytest.raises(i4vgen_job.I4VGenError, match="weights not found"):
        run(p)
    assert host.model.unet_log == []
    p = make_p(host, i4vgen=i4v(fallback="none"), ad=ad_args(batch_size=8))
    run(p)
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["chosen_anchor"] == 0 and record["ranked_by"].startswith("none (fallback")


# Errors, interrupts and skips in every stage: the host is put back ---------------------------------------------------
@pytest.mark.parametrize("stage", ["anchors", "ranking", "ni-vsds", "regeneration"])
@pytest.mark.parametrize("action", ["interrupt", "skip", "error"])
def test_host_restored_after_interrupt_skip_and_error(host, stub, watch, monkeypatch, stage, action):
    trigger_in(monkeypatch, host, stub, stage, action)
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8))
    run_stopped(p, action)
    assert_restored(watch, p)
    later = {"anchors": ("ni-vsds", "regeneration"), "ranking": ("ni-vsds", "regeneration"),
             "ni-vsds": ("regeneration",), "regeneration": ()}[stage]
    for next_stage in later:
        assert not stage_calls(host.model, next_stage), f"{next_stage} ran after the {action} in {stage}"


@pytest.mark.parametrize("stage, label, calls_before", [("I4VGen: anchor images", "anchor images", 1),
                                                       ("I4VGen: NI-VSDS", "NI-VSDS", 1),
                                                       ("I4VGen: NI-VSDS", "NI-VSDS", 2)])
def test_an_interrupt_returns_a_moving_unfinished_video_and_says_so(host, stub, monkeypatch, stage, label, calls_before):
    """As a plain job's sampler returns the latent it was denoising, an interrupted I4VGen video is NI-VSDS's noised
    video or, before any video exists, the noise it starts from: every frame its own (a still video would reach
    the user as a one-frame GIF, which the live WebUI showed)."""
    from modules import shared

    returned = []
    original = i4vgen_job.sample_batch
    monkeypatch.setattr(i4vgen_job, "sample_batch", lambda *a: (returned.append(original(*a)), returned[-1])[1])
    model = host.model
    apply = model.apply_model
    calls = []

    def apply_model(x, t, cond):
        if (shared.state.textinfo or "").startswith(stage):
            calls.append(t)
            if len(calls) == calls_before:
                shared.state.interrupt()
        return apply(x, t, cond)

    monkeypatch.setattr(model, "apply_model", apply_model)
    p = make_p(host, i4vgen=i4v(candidates=2), ad=ad_args(batch_size=8))
    res = run(p)
    video = returned[0]
    assert video.shape == (8, 4, 8, 8) and video.abs().sum() > 0  # not grey frames
    flat = video.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8)), "a still video"
    assert res.images and f"I4VGen video 1 (i4vgen) interrupted during {label}" in res.comments
    assert json.loads(p.extra_generation_params["I4VGen"])["interrupted"] == label

"""The sampler node over the stand-in ComfyUI + ADE: image-mode calls outside ADE's session and video-mode calls
inside it, the seed contract and the CLI's DDIM (the video matches the core's own run on the same weights), UNet
calls = the core's call plan, context windows in every video stage, progress, the anchor image, ranking."""
from __future__ import annotations

import json

import pytest
import torch

from i4vgen_ext.comfy.inputs import build_settings
from i4vgen_ext.core.compose import call_plan, run_mode, seeded_noises
from i4vgen_ext.core.denoiser import FixedSchedule
from i4vgen_ext.core.sampling import sample_ddim
from i4vgen_ext.core.schedule import ScheduleConfig, alphas_cumprod_for, sampling_timesteps

from .conftest import CANDIDATES, FRAMES, SIZE, STEPS, latent, run_node, widgets


def report_of(out) -> dict:
    text = out["result"][2]
    assert out["ui"]["i4vgen_report"] == [text]
    return json.loads(text)


class DirectDenoiser(FixedSchedule):
    """What the CLI runs, on the stand-in's weights: the core's float32 schedule and DDIM, CFG on eps in one
    function, the motion module in for video calls only; no ComfyUI anywhere."""

    def __init__(self, unet, motion, positive, negative, guidance, steps):
        self.unet, self.motion, self.guidance = unet, motion, guidance
        self.cond, self.uncond = positive[0][0], negative[0][0]
        self.unet_calls = 0
        self._alphas_cumprod = alphas_cumprod_for(ScheduleConfig())
        self._timesteps = sampling_timesteps(steps, ScheduleConfig())

    def _eps(self, frames, t, video):
        self.unet.motion = self.motion if video else None
        try:
            ts = torch.full((frames.shape[0],), float(t))
            cond = self.unet(frames, ts, context=self.cond)
            uncond = self.unet(frames, ts, context=self.uncond)
        finally:
            self.unet.motion = None
        self.unet_calls += 1
        return uncond + self.guidance * (cond - uncond)

    def predict_noise(self, x, t, *, video):
        if x.dim() == 5:
            frames = x[0].permute(1, 0, 2, 3)
            return self._eps(frames, t, video).permute(1, 0, 2, 3)[None]
        return self._eps(x, t, video)

    def denoise(self, x, noise, *, steps, video, stage, callback=None):
        return sample_ddim(lambda z, t: self.predict_noise(z, t, video=video), x, noise, steps=steps,
                           timesteps=self._timesteps, alphas_cumprod=self._alphas_cumprod, config=ScheduleConfig(),
                           stage=stage, callback=callback)


def log_of(models):
    return models["plain"].model.diffusion_model.log


def test_image_calls_run_outside_ades_session_and_video_calls_inside_it(models):
    from ade_standin import ade

    report = report_of(run_node(models))
    log = log_of(models)
    # each UNet call is a CFG pair (cond, uncond) of the whole batch
    image = [entry for entry in log if not entry[1]]
    video = [entry for entry in log if entry[1]]
    assert len(image) == 2 * STEPS and all(batch == CANDIDATES for batch, _, _ in image)
    assert len(video) == 2 * (report["unet_calls"]["nivsds"] + report["unet_calls"]["regeneration"])
    assert all(batch == FRAMES for batch, _, _ in video)
    assert report["sampling_sessions"] == {"image": 1, "video": len(ade.sessions)}
    assert len(ade.sessions) == report["unet_calls"]["nivsds"] + 1  # one per NI-VSDS call, one regeneration
    # the regeneration session advanced ADE's step counter once per step (its context scheduling reads it)
    assert ade.sessions[-1].current_step == report["unet_calls"]["regeneration"]
    # every timestep the model saw is one of the S sampling timesteps
    assert {t for _, _, ts in log for t in ts} <= set(sampling_timesteps(STEPS, ScheduleConfig()))


def test_the_video_matches_the_cores_own_run_on_the_same_weights(models):
    out = run_node(models)
    report = report_of(out)
    settings = build_settings(widgets(), frames=FRAMES, width=SIZE * 8, height=SIZE * 8, prompt="a corgi running")
    from comfy_tinymodel import MotionModule

    unet = models["plain"].model.diffusion_model
    direct = DirectDenoiser(unet, MotionModule(), models["positive"], models["negative"], settings.guidance,
                            settings.steps)
    reference = run_mode(direct, settings, seeded_noises(settings, SIZE, SIZE))
    ours = out["result"][0]["samples"] * 0.18215
    expected = reference.video[0].permute(1, 0, 2, 3)
    assert reference.unet_calls == report["unet_calls"]
    assert torch.allclose(ours, expected, atol=1e-4, rtol=1e-4), (ours - expected).abs().max()
    assert expected.abs().mean() > 0.05  # not a trivially zero video


def test_the_same_seed_gives_the_same_video_and_another_seed_another(models):
    first = run_node(models)["result"][0]["samples"]
    again = run_node(models)["result"][0]["samples"]
    other = run_node(models, seed=8)["result"][0]["samples"]
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("changes", [
    dict(),
    dict(regen_strength=0.5, nivsds_fraction=0.3),
    dict(mode="i4vgen+evs"),
    dict(mode="i4vgen+evs", evs_inversion=True, evs_t2v_step=1),
    dict(mode="i4vgen+evs", evs_t2v_step=0),
])
def test_unet_calls_are_the_cores_call_plan(models, changes):
    report = report_of(run_node(models, **changes))
    settings = build_settings(widgets(**changes), frames=FRAMES)
    assert report["unet_calls"] == call_plan(settings.mode, settings, evs=settings.evs())
    assert report["unet_calls"] == report["call_plan"]
    assert len(log_of(models)) <= 2 * report["unet_calls"]["total"]  # cfg 1 (inversion) runs one pass


def test_context_windows_apply_in_every_video_stage(models):
    from ade_standin import ade
    from ade_standin.ade import load_animatediff

    video = load_animatediff(models["plain"], context_length=4, context_overlap=2)
    report = report_of(run_node(models, video_model=video, latent_input=latent(frames=8), mode="i4vgen+evs"))
    assert report["context_length"] == 4
    assert ade.sessions and all(getattr(s, "windows", 0) >= 3 for s in ade.sessions)
    video_batches = {batch for batch, motion, _ in log_of(models) if motion}
    assert video_batches == {4}


def test_progress_moves_one_bar_through_every_stage(models):
    import comfy.utils

    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    report = report_of(run_node(models, mode="i4vgen+evs"))
    total = sum(report["progress_steps"].values())
    assert seen[-1] == (total, total)
    assert [v for v, _ in seen] == list(range(1, total + 1))
    assert set(report["progress_steps"]) >= {"anchors", "ranking", "ni-vsds", "regeneration", "evs-image"}


def test_an_anchor_image_skips_candidates_and_ranking(models):
    image = torch.rand(1, 80, 48, 3)
    out = run_node(models, anchor_image=image)
    report = report_of(out)
    assert report["anchor_index"] == -1 and report["unet_calls"]["anchor"] == 0
    assert report["sampling_sessions"]["image"] == 0
    assert all(motion for _, motion, _ in log_of(models))
    shown = out["result"][1]
    assert shown.shape == (1, SIZE * 8, SIZE * 8, 3)  # the anchor fitted to the video: cover, centre crop
    assert torch.allclose(shown[0, :, :, 0].mean(), image[0, 8:72, :, 0].mean(), atol=0.02)


class BrightnessRanker:
    name = "imagereward"

    def __init__(self):
        self.prompts = []

    def score(self, prompt, images):
        self.prompts.append(prompt)
        return [float(sum(image.convert("L").getdata())) for image in images]


def test_a_ranker_scores_the_decoded_candidates_and_the_best_is_the_anchor(models):
    from i4vgen_ext.comfy.ranking import RankerChoice

    ranker = BrightnessRanker()
    out = run_node(models, ranker=RankerChoice("imagereward", ranker, "imagereward"))
    report = report_of(out)
    scores = report["scores"]
    assert len(scores) == CANDIDATES and report["anchor_index"] == scores.index(max(scores))
    assert ranker.prompts == ["a corgi running"]
    assert out["result"][1].shape == (CANDIDATES, SIZE * 8, SIZE * 8, 3)
    manual = report_of(run_node(models, ranker=RankerChoice("imagereward", ranker, "imagereward"), anchor_index=1))
    assert manual["anchor_index"] == 1 and manual["scores"] is None and len(ranker.prompts) == 1

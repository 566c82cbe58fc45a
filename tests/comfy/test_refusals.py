"""Bad inputs are refused with the setting named before any UNet call; Cancel stops the job at once and leaves the
MODELs as they were (a plain ADE job afterwards gives the same video as before)."""
from __future__ import annotations

import pytest
import torch

from i4vgen_ext.core.settings import SettingsError

from .conftest import latent, run_node


def plain_ade_job(models, seed=3):
    """A plain ADE txt2vid job on the cached MODEL objects: Euler over 4 sigmas via ``comfy.sample.sample_custom``."""
    import comfy.sample
    import comfy.samplers

    def euler(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model_k(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    video = models["video"]
    sampling = video.get_model_object("model_sampling")
    sigmas = torch.cat([sampling.sigmas[[999, 749, 499, 249]], torch.zeros(1)])
    noise = torch.randn((6, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample_custom(video, noise, 7.5, comfy.samplers.KSAMPLER(euler), sigmas, models["positive"],
                                      models["negative"], torch.zeros_like(noise), seed=seed)


def refused(models, name, **kwargs):
    with pytest.raises(SettingsError) as error:
        run_node(models, **kwargs)
    assert error.value.name == name, str(error.value)
    assert models["plain"].model.diffusion_model.log == []  # refused before the first UNet call
    return str(error.value)


def test_a_latent_whose_batch_is_not_a_frame_count_is_refused(models):
    message = refused(models, "latent", latent_input=latent(frames=129))
    assert "batch = frames" in message
    refused(models, "latent", latent_input={"samples": torch.zeros(8, 16, 8, 8)})
    refused(models, "latent", latent_input={"samples": torch.zeros(8, 4, 8, 8), "noise_mask": torch.ones(1, 8, 8)})


def test_a_non_sd15_model_is_refused(models):
    from ade_standin.ade import load_animatediff
    from comfy_tinymodel import SDXL, make_model

    sdxl = make_model(SDXL)
    models = dict(models, plain=sdxl)
    assert "SD1.5" in refused(models, "image_model", video_model=load_animatediff(make_model()))
    models["plain"] = make_model()
    refused(models, "video_model", video_model=load_animatediff(sdxl))


def test_a_video_model_without_a_motion_model_is_refused(models):
    message = refused(models, "video_model", video_model=models["plain"].clone())
    assert "AnimateDiff" in message


def test_the_video_model_as_image_model_is_refused(models):
    refused(dict(models, plain=models["video"]), "image_model")


def test_ades_freeinit_iterations_are_refused(models):
    from ade_standin.ade import load_animatediff

    assert "1 (ADE" in refused(models, "FreeInit iterations", video_model=load_animatediff(models["plain"], iterations=2))
    refused(models, "custom_cfg", video_model=load_animatediff(models["plain"], custom_cfg=object()))


def test_ranking_without_a_vae_or_a_prompt_is_refused(models):
    from i4vgen_ext.comfy.ranking import RankerChoice

    ranker = RankerChoice("clip", object(), "clip")
    refused(models, "vae", vae=None, ranker=ranker)
    refused(models, "prompt", ranker=ranker, prompt="  ")
    refused(models, "vae", vae=None, anchor_image=torch.rand(1, 64, 64, 3))


def test_a_bad_setting_is_refused_before_sampling(models):
    refused(models, "regen_strength", regen_strength=2.0)
    refused(models, "mode", mode="plain")


@pytest.mark.parametrize("stop_after", [2, 6, 9])
def test_cancel_stops_at_once_and_leaves_the_models_as_they_were(models, stop_after):
    import comfy.model_management as mm
    import comfy.utils

    before = plain_ade_job(models)
    calls_before = len(models["plain"].model.diffusion_model.log)
    video_state = (dict(models["video"].object_patches), dict(models["video"].attachments),
                   {k: dict(v) for k, v in models["video"].wrappers.items()})
    plain_state = dict(models["plain"].object_patches)

    def hook(value, total, preview, node_id=None):
        if value == stop_after:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(models)
    comfy.utils.set_progress_bar_global_hook(None)
    log = models["plain"].model.diffusion_model.log[calls_before:]
    assert len(log) == 2 * stop_after - (2 if stop_after > 4 else 0)  # no call after the step that saw Cancel
    assert models["plain"].object_patches == plain_state
    assert (dict(models["video"].object_patches), dict(models["video"].attachments),
            {k: dict(v) for k, v in models["video"].wrappers.items()}) == video_state
    assert "ADGS" not in models["video"].model_options["transformer_options"]
    after = plain_ade_job(models)
    assert torch.equal(before, after)

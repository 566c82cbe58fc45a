"""The diffusers backbone on the embedded tiny demo model: image/video modes, CFG, sampler equality, VAE I/O."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i4vgen_ext.core.denoiser import Denoiser
from i4vgen_ext.core.schedule import ScheduleConfig, alphas_cumprod_for, sampling_timesteps

pytestmark = pytest.mark.standalone

PROMPT = "a photo of a cat"


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def plain_unet(demo_model_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(demo_model_dir, subfolder="unet", local_files_only=True).eval()
    for p in unet.parameters():  # own aligned copies, as the backbone keeps (see _own_aligned_memory)
        p.data = p.data.clone()
    return unet


def official_scheduler():
    from diffusers import DDIMScheduler

    from i4vgen_ext.backbones.configs import scheduler_config

    return DDIMScheduler.from_config(scheduler_config())


def test_denoiser_follows_the_protocol(demo_backbone):
    denoiser = demo_backbone.denoiser(PROMPT, "", 7.5, 25)
    assert isinstance(denoiser, Denoiser)
    assert list(denoiser.timesteps) == sampling_timesteps(25, ScheduleConfig())
    assert denoiser.timesteps[0] == 961 and denoiser.timesteps[-1] == 1
    assert torch.equal(denoiser.alphas_cumprod, alphas_cumprod_for(ScheduleConfig()))


def test_size_and_scale_factor(demo_backbone):
    assert demo_backbone.vae_scale_factor == 8
    assert demo_backbone.default_size == (64, 64)


def test_image_mode_runs_no_motion_module_and_equals_a_plain_2d_unet(demo_backbone, demo_model_dir):
    denoiser = demo_backbone.denoiser(PROMPT, "blurry", 7.5, 25)
    x = noise(3, 4, 8, 8)
    before = demo_backbone.motion_module_calls
    eps = denoiser.predict_noise(x, 501, video=False)
    assert demo_backbone.motion_module_calls == before
    assert denoiser.unet_calls == 1

    unet = plain_unet(demo_model_dir)
    rows = denoiser.embeddings.repeat_interleave(3, dim=0)
    with torch.no_grad():
        u, c = unet(torch.cat([x, x]), torch.tensor(501), encoder_hidden_states=rows).sample.chunk(2)
    assert torch.equal(eps, u + 7.5 * (c - u))


def test_image_unet_shares_storage_with_the_motion_unet(demo_backbone, demo_model_dir):
    motion_ptrs = {p.data_ptr() for p in demo_backbone.unet.parameters()}
    image_params = list(demo_backbone.image_unet.parameters())
    assert image_params and all(p.data_ptr() in motion_ptrs for p in image_params)
    # The view has exactly the plain UNet's parameters, none of its own.
    assert sum(p.numel() for p in image_params) == sum(p.numel() for p in plain_unet(demo_model_dir).parameters())
    motion_only = sum(p.numel() for n, p in demo_backbone.unet.named_parameters() if "motion_modules" in n)
    assert sum(p.numel() for p in demo_backbone.unet.parameters()) == sum(p.numel() for p in image_params) + motion_only


def test_video_mode_runs_every_motion_module_once_per_call(demo_backbone):
    denoiser = demo_backbone.denoiser(PROMPT, "", 7.5, 25)
    modules = len(demo_backbone._motion_modules())
    assert modules == 8 + 12 + 1  # 4 levels x 2 down, 4 x 3 up, 1 mid (v2-style)
    before = demo_backbone.motion_module_calls
    denoiser.predict_noise(noise(1, 4, 4, 8, 8), 501, video=True)
    assert demo_backbone.motion_module_calls - before == modules
    assert denoiser.unet_calls == 1


def test_motion_modules_act_below_16_frames(demo_backbone):
    """The official code silently drops motion for F < 16; here a static 8-frame video still gets animated."""
    denoiser = demo_backbone.denoiser(PROMPT, "", 7.5, 25)
    frame = noise(1, 4, 8, 8)
    video = frame[:, :, None].repeat(1, 1, 8, 1, 1)
    eps_video = denoiser.predict_noise(video, 501, video=True)
    eps_image = denoiser.predict_noise(frame, 501, video=False)
    for k in range(8):
        assert (eps_video[:, :, k] - eps_image).abs().max() > 1e-3
    assert (eps_video[:, :, 0] - eps_video[:, :, 7]).abs().max() > 1e-4  # frames diverge: positions matter


def test_guidance_at_most_one_is_a_single_conditional_pass(demo_backbone, demo_model_dir):
    denoiser = demo_backbone.denoiser(PROMPT, "ignored", 1.0, 25)
    assert denoiser.embeddings.shape[0] == 1
    x = noise(2, 4, 8, 8)
    eps = denoiser.predict_noise(x, 301, video=False)
    with torch.no_grad():
        rows = denoiser.embeddings.repeat(2, 1, 1)
        ref = plain_unet(demo_model_dir)(x, torch.tensor(301), encoder_hidden_states=rows).sample
    assert torch.equal(eps, ref)


def test_image_batch_size_splits_into_counted_forwards(demo_backbone):
    x = noise(5, 4, 8, 8)
    whole = demo_backbone.denoiser(PROMPT, "", 7.5, 25)
    split = demo_backbone.denoiser(PROMPT, "", 7.5, 25, image_batch_size=2)
    eps_whole, eps_split = whole.predict_noise(x, 701, video=False), split.predict_noise(x, 701, video=False)
    assert (whole.unet_calls, split.unet_calls) == (1, 3)
    torch.testing.assert_close(eps_split, eps_whole, rtol=1e-5, atol=1e-5)


def test_video_ddim_equals_diffusers_animatediff_pipeline(demo_backbone):
    from diffusers import AnimateDiffPipeline

    b = demo_backbone
    latents = noise(1, 4, 4, 8, 8, seed=3)
    denoiser = b.denoiser(PROMPT, "", 7.5, 3)
    ours = denoiser.denoise(None, latents, steps=3, video=True, stage="video")
    assert denoiser.unet_calls == 3
    pipe = AnimateDiffPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                               motion_adapter=None, scheduler=official_scheduler())
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, negative_prompt="", num_frames=4, height=64, width=64, num_inference_steps=3,
                     guidance_scale=7.5, latents=latents.clone(), output_type="latent").frames
    assert (ours - reference).abs().max().item() <= 1e-6


def test_image_ddim_equals_diffusers_sd_pipeline_and_partial_denoise_is_img2img(demo_backbone):
    from diffusers import StableDiffusionPipeline

    b = demo_backbone
    latents = noise(3, 4, 8, 8, seed=4)
    denoiser = b.denoiser(PROMPT, "", 7.5, 3)
    ours = denoiser.denoise(None, latents, steps=3, video=False, stage="anchors")
    pipe = StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.image_unet,
                                   scheduler=official_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, negative_prompt="", num_images_per_prompt=3, height=64, width=64, num_inference_steps=3,
                     guidance_scale=7.5, latents=latents.clone(), output_type="latent").images
    assert (ours - reference).abs().max().item() <= 1e-6

    events = []
    partial = denoiser.denoise(ours, latents, steps=2, video=False, stage="again", callback=events.append)
    assert [e.timestep for e in events] == list(denoiser.timesteps[1:]) and partial.shape == ours.shape


def test_decode_matches_the_vae_and_diffusers_rounding(demo_backbone):
    b = demo_backbone
    latents = noise(2, 4, 8, 8, seed=5)
    images = b.decode_images(latents, chunk_size=1)
    assert [im.size for im in images] == [(64, 64)] * 2 and {im.mode for im in images} == {"RGB"}
    with torch.no_grad():
        pixels = b.vae.decode(latents[1:] / b.vae.config.scaling_factor).sample
    expected = ((pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(images[1]), expected)

    video = noise(1, 4, 3, 8, 8, seed=6)
    frames = b.decode_video(video)
    assert len(frames) == 3
    assert np.array_equal(np.asarray(frames[2]), np.asarray(b.decode_images(video[0, :, 2][None])[0]))
    with pytest.raises(ValueError):
        b.decode_video(noise(4, 8, 8))


def test_encode_image_mean_and_sample(demo_backbone):
    b = demo_backbone
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    mean = b.encode_image(image)
    assert mean.shape == (4, 8, 11) and mean.dtype == torch.float32  # cropped to 64 x 88
    assert torch.equal(b.encode_image(image), mean)
    assert b.encode_image(image, size=(64, 64)).shape == (4, 8, 8)
    first = b.encode_image(image, sample=True, generator=torch.Generator().manual_seed(1))
    again = b.encode_image(image, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, mean)


def test_description_labels_the_demo_model(demo_backbone):
    d = demo_backbone.description
    assert d["demo"] is True and "random weights" in d["name"]
    assert d["dtype"] == "float32" and d["device"] == "cpu" and d["loras"] == []
    assert d["motion_module_version"] == "v2"


def test_i4vgen_runs_end_to_end_on_the_backbone(demo_backbone):
    from i4vgen_ext.core.noise import draw_noises, seeded_generator
    from i4vgen_ext.core.pipeline import run_i4vgen
    from i4vgen_ext.core.settings import I4VGenSettings

    settings = I4VGenSettings(prompt=PROMPT, frames=4, candidates=3, steps=2, width=64, height=64)
    noises = draw_noises(seeded_generator(7), frames=4, candidates=3, latent_height=8, latent_width=8)
    denoiser = demo_backbone.denoiser(PROMPT, "", settings.guidance, settings.steps)
    before = demo_backbone.motion_module_calls
    result = run_i4vgen(denoiser, settings, noises, decode_images=demo_backbone.decode_images)
    assert result.video.shape == (1, 4, 4, 8, 8) and torch.isfinite(result.video).all()
    assert result.unet_calls["anchor"] == 2
    video_calls = result.unet_calls["nivsds"] + result.unet_calls["regeneration"]
    assert demo_backbone.motion_module_calls - before == video_calls * len(demo_backbone._motion_modules())
    assert len(demo_backbone.decode_video(result.video)) == 4

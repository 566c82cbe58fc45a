"""The `official` preset in fp32 on the CPU reproduces the official I4VGen algorithm's latents.

The reference below re-implements ``AnimationPipeline.__call__`` of xiefan-guo/i4vgen with diffusers' own
``DDIMScheduler`` (steps_offset 1, clip_sample off, linear betas) and the same UNet weights, drawing its noise
from one CPU generator in the official order (candidates -> NI-VSDS -> regeneration)."""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from i4vgen_ext.core.noise import draw_noises, seeded_generator
from i4vgen_ext.core.pipeline import run_i4vgen
from i4vgen_ext.core.settings import I4VGenSettings

PROMPT = "a corgi running on the beach"


class FixedScores:
    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def score(self, prompt, images):
        return list(self.scores[: len(images)])

    def unload(self):
        pass


def _embeddings(backbone, prompt, negative):
    def encode(text):
        ids = backbone.tokenizer(text, padding="max_length", max_length=backbone.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        return backbone.text_encoder(ids)[0]

    return torch.cat([encode(negative), encode(prompt)])


@torch.no_grad()
def official_reference(backbone, *, seed, frames, steps, guidance, anchor_index, p_ni_vsds=0.6, p_re=1.0):
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1,
                              clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    emb = _embeddings(backbone, PROMPT, "")
    h = w = backbone.default_size[0] // backbone.vae_scale_factor
    g = torch.Generator().manual_seed(seed)

    def cfg(eps):
        u, c = eps.chunk(2)
        return u + guidance * (c - u)

    # Stage 1: F single-frame candidates, motion module off, CFG batch [uncond x N, cond x N].
    latents = torch.randn((1, 4, frames, h, w), generator=g)
    cand = latents[0].permute(1, 0, 2, 3)
    img_emb = emb.repeat_interleave(frames, dim=0)
    for t in scheduler.timesteps:
        eps = backbone.image_unet(torch.cat([cand] * 2), t, encoder_hidden_states=img_emb).sample
        cand = scheduler.step(cfg(eps), t, cand).prev_sample
    video = cand[anchor_index][None, :, None].repeat(1, 1, frames, 1, 1)

    vid_emb = emb.repeat_interleave(frames, dim=0)

    def video_eps(x, t):
        return cfg(backbone.unet(torch.cat([x] * 2), t, encoder_hidden_states=vid_emb).sample)

    # Stage 2: NI-VSDS with one constant noise.
    constant_noise = torch.randn(video.shape, generator=g)
    step_size = [10, 10, 10] + [1] * 22
    for i, t in enumerate(scheduler.timesteps[: int(steps * p_ni_vsds) + 1]):
        x_t = scheduler.add_noise(video, constant_noise, t)
        w_t = 1 - scheduler.alphas_cumprod[t]
        video = video - step_size[i] * (w_t * (video_eps(x_t, t) - constant_noise))
    nivsds = video

    # Stage 3: regeneration from timesteps[S - int(S * p_re)] with fresh noise.
    fresh = torch.randn(video.shape, generator=g)
    n_re = min(int(steps * p_re), steps)
    timesteps = scheduler.timesteps[steps - n_re :]
    x = scheduler.add_noise(video, fresh, timesteps[:1])
    for t in timesteps:
        x = scheduler.step(video_eps(x, t), t, x).prev_sample
    return cand, nivsds, x


def test_official_preset_reproduces_the_official_latents(demo_backbone):
    frames, steps, seed, winner = 4, 6, 101, 2
    settings = I4VGenSettings.from_preset("official", prompt=PROMPT, seed=seed, frames=frames, candidates=frames,
                                          steps=steps)
    h = demo_backbone.default_size[0] // demo_backbone.vae_scale_factor
    noises = draw_noises(seeded_generator(seed), frames=frames, candidates=frames, latent_height=h, latent_width=h)
    scores = [0.0] * frames
    scores[winner] = 1.0
    denoiser = demo_backbone.denoiser(PROMPT, "", 7.5, steps)
    result = run_i4vgen(denoiser, settings, noises, ranker=FixedScores(scores),
                        decode_images=demo_backbone.decode_images)
    cand, nivsds, final = official_reference(demo_backbone, seed=seed, frames=frames, steps=steps, guidance=7.5,
                                             anchor_index=winner)
    assert result.anchor_index == winner
    torch.testing.assert_close(result.candidates, cand, rtol=0, atol=0)  # bit for bit
    torch.testing.assert_close(result.nivsds, nivsds, rtol=0, atol=0)
    torch.testing.assert_close(result.video, final, rtol=0, atol=0)
    assert result.unet_calls == {"anchor": 6, "nivsds": 4, "regeneration": 6, "total": 16}

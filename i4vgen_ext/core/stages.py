"""The I4VGen stages as small functions over a ``Denoiser``.

Each takes its noise explicitly and returns what it did (latents, timesteps, UNet calls), so a stage can be
tested alone and a run reproduced exactly. Latents live in SD's scaled latent space throughout."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from .denoiser import Denoiser, StepCallback, notify
from .schedule import add_noise


@dataclass
class StageResult:
    latents: torch.Tensor
    unet_calls: int
    timesteps: List[int] = field(default_factory=list)


@torch.no_grad()
def generate_candidates(
    denoiser: Denoiser, noise: torch.Tensor, *, callback: Optional[StepCallback] = None
) -> StageResult:
    """Stage 1a: N candidate anchors in image mode (no motion module), batched, from ``noise`` (N, 4, h, w)."""
    if noise.dim() != 4:
        raise ValueError(f"candidate noise must be (N, 4, h, w), got {tuple(noise.shape)}")
    before = denoiser.unet_calls
    steps = len(denoiser.timesteps)
    latents = denoiser.denoise(None, noise, steps=steps, video=False, stage="anchors", callback=callback)
    return StageResult(latents, denoiser.unet_calls - before, list(denoiser.timesteps))


def select_anchor(scores: Sequence[float]) -> int:
    """Stage 1b: the highest score wins; a tie goes to the lowest index (the official ``max(enumerate(...))``)."""
    if len(scores) == 0:
        raise ValueError("no candidate scores to select from")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def static_video(anchor: torch.Tensor, frames: int) -> torch.Tensor:
    """Stage 2: the anchor latent (4, h, w) repeated ``frames`` times -> (1, 4, F, h, w). No VAE round trip."""
    if anchor.dim() != 3:
        raise ValueError(f"anchor latent must be (4, h, w), got {tuple(anchor.shape)}")
    return anchor[None, :, None].repeat(1, 1, frames, 1, 1)


@torch.no_grad()
def ni_vsds(
    denoiser: Denoiser,
    video: torch.Tensor,
    noise: torch.Tensor,
    *,
    iterations: int,
    alphas: Sequence[float],
    callback: Optional[StepCallback] = None,
) -> StageResult:
    """Stage 3: noise-invariant video score distillation sampling.

    For the first K timesteps (high to low), noise the video with the SAME ``noise`` every time, take the video
    model's CFG prediction and step ``x <- x - alpha_i * (1 - abar_t) * (eps_pred - noise)``. No autograd, no
    clipping: the residual is the closed-form SDS gradient."""
    if noise.shape != video.shape:
        raise ValueError(f"NI-VSDS noise {tuple(noise.shape)} must match the video {tuple(video.shape)}")
    if len(alphas) < iterations:
        raise ValueError(f"{iterations} NI-VSDS iterations need {iterations} step sizes, got {len(alphas)}")
    before = denoiser.unet_calls
    ts = list(denoiser.timesteps[:iterations])
    ac = denoiser.alphas_cumprod
    x = video
    for i, t in enumerate(ts):
        x_t = add_noise(x, noise, t, ac)
        eps = denoiser.predict_noise(x_t, t, video=True)
        w = 1 - ac[t]
        x = x - alphas[i] * (w * (eps - noise))
        notify(callback, "ni-vsds", i + 1, len(ts), t, x)
    return StageResult(x, denoiser.unet_calls - before, ts)


@torch.no_grad()
def regenerate(
    denoiser: Denoiser,
    video: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int,
    callback: Optional[StepCallback] = None,
) -> StageResult:
    """Stage 4: re-noise to ``timesteps[S - steps]`` with fresh ``noise`` and denoise ``steps`` steps in video
    mode. ``steps == 0`` returns the input video unchanged."""
    total = len(denoiser.timesteps)
    ts = list(denoiser.timesteps[total - steps :]) if steps > 0 else []
    if not ts:
        return StageResult(video, 0, [])
    before = denoiser.unet_calls
    x = denoiser.denoise(video, noise, steps=steps, video=True, stage="regeneration", callback=callback)
    return StageResult(x, denoiser.unet_calls - before, ts)


@torch.no_grad()
def plain_video(denoiser: Denoiser, noise: torch.Tensor, *, callback: Optional[StepCallback] = None) -> StageResult:
    """Plain AnimateDiff: a full video-mode denoise from ``noise`` (1, 4, F, h, w). The baseline I4VGen improves."""
    before = denoiser.unet_calls
    steps = len(denoiser.timesteps)
    latents = denoiser.denoise(None, noise, steps=steps, video=True, stage="plain", callback=callback)
    return StageResult(latents, denoiser.unet_calls - before, list(denoiser.timesteps))

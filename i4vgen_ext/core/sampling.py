"""Samplers as small pure functions over a noise predictor and a schedule (k-diffusion style)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .denoiser import StepCallback, notify
from .schedule import ScheduleConfig, add_noise, ddim_step, final_alpha_cumprod_for, previous_timestep

NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def sample_ddim(
    predict: NoisePredictor,
    x: Optional[torch.Tensor],
    noise: torch.Tensor,
    *,
    steps: int,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    config: ScheduleConfig,
    stage: str,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """DDIM, eta = 0, over the last ``steps`` of ``timesteps``.

    ``x is None`` is a full denoise starting from ``noise`` itself (DDIM's initial sigma is 1); otherwise ``x``
    is noised to ``timesteps[S - steps]`` with ``noise`` first (the img2img ``strength`` rule)."""
    total = len(timesteps)
    run = list(timesteps[total - steps :]) if steps > 0 else []
    if x is None:
        if steps != total:
            raise ValueError("a full denoise runs every timestep")
        latents = noise
    elif not run:
        return x
    else:
        latents = add_noise(x, noise, run[0], alphas_cumprod)
    final = final_alpha_cumprod_for(config, alphas_cumprod)
    for i, t in enumerate(run):
        eps = predict(latents, t)
        latents = ddim_step(latents, eps, t, previous_timestep(t, total, config), alphas_cumprod, final)
        notify(callback, stage, i + 1, len(run), t)
    return latents

"""Noise schedule arithmetic, written to match diffusers' DDIMScheduler operation for operation so that
fp32 runs reproduce the official code's latents bit for bit."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    """The DDIM configuration of the official I4VGen AnimateDiff code (``DDIMScheduler`` with the pipeline's
    forced ``steps_offset=1`` and ``clip_sample=False``)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    steps_offset: int = 1
    clip_sample: bool = False
    set_alpha_to_one: bool = True
    timestep_spacing: str = "leading"

    def to_dict(self) -> dict:
        return asdict(self)


def alphas_cumprod_for(config: ScheduleConfig) -> torch.Tensor:
    t = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, t, dtype=torch.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, t, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {config.beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def sampling_timesteps(steps: int, config: ScheduleConfig) -> List[int]:
    """The S descending training timesteps a DDIM run visits ("leading" or "trailing" spacing)."""
    t = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        ratio = t // steps
        ts = [i * ratio + config.steps_offset for i in range(steps)]
    elif config.timestep_spacing == "trailing":
        ratio = t / steps
        ts = [int(round(t - i * ratio)) - 1 for i in range(steps)][::-1]
    else:
        raise ValueError(f"timestep_spacing must be 'leading' or 'trailing', got {config.timestep_spacing!r}")
    return sorted(ts, reverse=True)


def add_noise(x: torch.Tensor, noise: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[t].to(dtype=x.dtype, device=x.device)
    return a**0.5 * x + (1 - a) ** 0.5 * noise


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    prev_t: int,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM step from ``t`` to ``prev_t`` (``prev_t < 0`` means the end)."""
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def final_alpha_cumprod_for(config: ScheduleConfig, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.tensor(1.0) if config.set_alpha_to_one else alphas_cumprod[0]


def previous_timestep(t: int, steps: int, config: ScheduleConfig) -> int:
    # diffusers derives the previous timestep from the scheduler's own step count, whatever the number of
    # steps actually run (a partial regeneration still strides by T // S).
    return t - config.num_train_timesteps // steps

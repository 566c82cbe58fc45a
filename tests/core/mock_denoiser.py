"""A Denoiser over a known noise function, for testing the stages without any model."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from i4vgen_ext.core.denoiser import FixedSchedule, StepCallback
from i4vgen_ext.core.sampling import sample_ddim
from i4vgen_ext.core.schedule import ScheduleConfig, alphas_cumprod_for, sampling_timesteps

EpsFn = Callable[[torch.Tensor, int, bool], torch.Tensor]


class MockDenoiser(FixedSchedule):
    def __init__(self, eps_fn: Optional[EpsFn] = None, steps: int = 25, config: ScheduleConfig = ScheduleConfig()):
        self.eps_fn = eps_fn or (lambda x, t, video: 0.1 * x + 0.01 * t / 1000)
        self.config = config
        self._alphas_cumprod = alphas_cumprod_for(config)
        self._timesteps = sampling_timesteps(steps, config)
        self.unet_calls = 0
        self.calls: List[Tuple[int, bool, torch.Tensor]] = []

    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool) -> torch.Tensor:
        expected_dims = 5 if video else 4
        assert x.dim() == expected_dims, f"video={video} expects {expected_dims} dims, got {tuple(x.shape)}"
        self.unet_calls += 1
        self.calls.append((t, video, x.clone()))
        return self.eps_fn(x, t, video)

    def denoise(self, x, noise, *, steps, video, stage, callback: Optional[StepCallback] = None):
        return sample_ddim(
            lambda z, t: self.predict_noise(z, t, video=video), x, noise, steps=steps, timesteps=self._timesteps,
            alphas_cumprod=self._alphas_cumprod, config=self.config, stage=stage, callback=callback,
        )

"""The small interface the I4VGen stages run over: a backbone binds a prompt, its negative prompt and the guidance
scale and exposes ``predict_noise``, ``denoise``, ``alphas_cumprod`` and ``timesteps``; ``record_attention`` /
``inject_attention`` are an optional capability (EVS's Selective Feature Injection).

Details: docs/denoiser.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class StepEvent:
    """One finished UNet step inside a stage (``i`` counts from 1 up to ``total``)."""

    stage: str
    i: int
    total: int
    timestep: int
    latents: Optional[torch.Tensor] = None  # the stage's current video, where a stage has one to show


StepCallback = Callable[[StepEvent], None]


@runtime_checkable
class Denoiser(Protocol):
    unet_calls: int

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...

    @property
    def timesteps(self) -> Sequence[int]: ...

    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool) -> torch.Tensor: ...

    def denoise(
        self,
        x: Optional[torch.Tensor],
        noise: torch.Tensor,
        *,
        steps: int,
        video: bool,
        stage: str,
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor: ...


def notify(callback: Optional[StepCallback], stage: str, i: int, total: int, timestep: int,
           latents: Optional[torch.Tensor] = None) -> None:
    if callback is not None:
        callback(StepEvent(stage, i, total, int(timestep), latents))


class FixedSchedule:
    """The protocol's schedule properties for a denoiser that fixes its schedule when it is made: it sets
    ``_alphas_cumprod`` and ``_timesteps``."""

    _alphas_cumprod: torch.Tensor
    _timesteps: Sequence[int]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def timesteps(self) -> Sequence[int]:
        return self._timesteps

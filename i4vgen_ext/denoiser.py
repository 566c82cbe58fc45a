"""The small interface the I4VGen stages run over.

A backbone (diffusers in this package, A1111 + AnimateDiff in ``scripts/``) binds a prompt, its negative
prompt and the guidance scale, and exposes:

* ``predict_noise(x, t, video=...)``: one classifier-free-guided noise prediction at training timestep ``t``.
  Image mode takes ``x`` of shape (N, 4, h, w) and never runs a motion module; video mode takes
  (1, 4, F, h, w). Each call is one CFG-batched UNet evaluation and adds 1 to ``unet_calls``.
* ``denoise(x, noise, steps=n, video=...)``: a full (``x is None``: start from pure ``noise``) or partial
  (noise ``x`` to the level of ``timesteps[S - n]`` with ``noise`` and run the last ``n`` steps) denoise
  with the backbone's sampler. Adds one to ``unet_calls`` per UNet evaluation it makes.
* ``alphas_cumprod`` (the training schedule, used for w(t) and ``add_noise``) and ``timesteps`` (the S
  sampling timesteps, descending).

Progress and interruption flow through ``callback(StepEvent)``; a callback stops a run by raising.
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


def notify(callback: Optional[StepCallback], stage: str, i: int, total: int, timestep: int) -> None:
    if callback is not None:
        callback(StepEvent(stage, i, total, int(timestep)))

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

Optional capability, NOT part of the required protocol (EVS's Selective Feature Injection, ``EVSSettings.sfi``,
needs it and says so when a denoiser lacks it; ``core.attention`` implements it, adapted to each host):

* ``record_attention(layers="all", *, timesteps=None)``: a context manager yielding a store. While it is active,
  every video-mode ``predict_noise`` records the spatial self-attention (``attn1`` of the spatial transformer
  blocks, never a motion module) Q, K and V of the chosen layers, per batch row as computed (both CFG halves),
  keyed by (timestep, layer name). The key is the call's timestep, or the level given by an enclosing
  ``store.filed_under(level)``; with ``timesteps`` only records under those keys are kept.
* ``inject_attention(store, gamma, layers="all")``: a context manager. While it is active, every video-mode
  ``predict_noise`` at timestep t attends, in those layers, with K and V replaced by the store's K_inv, V_inv
  under key t and Q by gamma*Q_inv + (1 - gamma)*Q (EVS Eq. 11). A record made without CFG serves both halves
  of a CFG call.
* ``layers``: "deep" (mid block + the lowest-resolution down/up blocks with spatial attention), "shallow" (the
  highest-resolution ones), "all", or a comma list of module-name prefixes (see ``evs.parse_sfi_layers``).
Both leave image mode alone, cost no UNet call, and restore the model exactly when they exit, also on errors.
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

"""The core's ``Denoiser`` over ComfyUI + AnimateDiff-Evolved: every UNet call runs inside a ComfyUI sampling
session whose sampler function is the stage's own loop (the core's DDIM, NI-VSDS, EVS), never a stock sampler.

Video mode samples ADE's MODEL, so ADE's outer-sample wrapper injects the motion modules, applies its context
options and evaluates CFG through its ``evolved_sampling_function``. Image mode samples a clone of the plain MODEL
that carries the video MODEL's ``model_sampling`` (ADE puts its own linear-beta schedule on its clone), outside any
ADE session, so no motion module runs. The session is given zero noise and a zero latent: ADE then draws no noise of
its own (``SampleSettings.prepare_noise`` is skipped when the noise is all zeros) and every noise comes from the
core's seed contract.

sigma <-> t: ``alphas_cumprod = 1 / (1 + sigma^2)`` over the video MODEL's sigma table, and a call at timestep t
passes exactly ``sigmas[t]``, which ``ModelSamplingDiscrete.timestep`` maps back to t.

Details: docs/comfyui.md §How it runs.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from ..core.denoiser import FixedSchedule, StepCallback
from ..core.sampling import sample_ddim
from ..core.schedule import ScheduleConfig, sampling_timesteps
from . import shim
from .latents import from_frames, to_frames

EpsAt = Callable[[torch.Tensor, int], torch.Tensor]  # (frames in the model's latent space, t) -> eps frames


def alphas_cumprod_of(model: Any) -> torch.Tensor:
    """The schedule of a ComfyUI MODEL (with its object patches): ``1 / (1 + sigma^2)``, float32."""
    sigmas = model.get_model_object("model_sampling").sigmas.detach().double().cpu()
    return (1.0 / (1.0 + sigmas**2)).float()


def image_model_for(plain_model: Any, video_model: Any) -> Any:
    """A clone of the plain MODEL that samples on the video MODEL's schedule (the user's MODEL stays untouched)."""
    image_model = plain_model.clone()
    image_model.add_object_patch("model_sampling", video_model.get_model_object("model_sampling"))
    return image_model


class ComfyDenoiser(FixedSchedule):
    """``i4vgen_ext.core.denoiser.Denoiser`` over one image MODEL, one ADE video MODEL and one pair of CONDITIONINGs.
    ``unet_calls`` counts CFG evaluations of a batch (one per step of a stage), as the core's call plan does."""

    def __init__(self, image_model: Any, video_model: Any, positive: Any, negative: Any, *, guidance: float,
                 steps: int, schedule: ScheduleConfig, seed: int):
        self.image_model, self.video_model = image_model, video_model
        self.positive, self.negative = positive, negative
        self.guidance, self.steps, self.schedule, self.seed = float(guidance), steps, schedule, seed
        self.unet_calls = 0
        self.sessions = {"image": 0, "video": 0}
        self._sigmas = video_model.get_model_object("model_sampling").sigmas.detach().float().cpu()
        self._alphas_cumprod = alphas_cumprod_of(video_model)
        self._timesteps = sampling_timesteps(steps, schedule)

    def variant(self, *, guidance: float) -> "ComfyDenoiser":
        """The same models and conditioning with another CFG scale (EVS's inversion runs without CFG)."""
        return ComfyDenoiser(self.image_model, self.video_model, self.positive, self.negative, guidance=guidance,
                             steps=self.steps, schedule=self.schedule, seed=self.seed)

    def sigma(self, t: int) -> float:
        return float(self._sigmas[int(t)])

    # Denoiser protocol ---------------------------------------------------------------------------------------
    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool) -> torch.Tensor:
        if video:
            return self._session(True, tuple(to_frames(x).shape), [int(t)],
                                 lambda eps_at: from_frames(eps_at(to_frames(x), t)))
        frames = to_frames(x) if x.dim() == 5 else x
        eps = self._session(False, tuple(frames.shape), [int(t)], lambda eps_at: eps_at(frames, t))
        return from_frames(eps) if x.dim() == 5 else eps

    def denoise(self, x: Optional[torch.Tensor], noise: torch.Tensor, *, steps: int, video: bool, stage: str,
                callback: Optional[StepCallback] = None) -> torch.Tensor:
        """The core's DDIM (eta 0) over the last ``steps`` timesteps, all its calls in one session."""
        total = len(self._timesteps)
        run = self._timesteps[total - steps:] if steps > 0 else []
        if x is not None and not run:
            return x

        def body(eps_at: EpsAt) -> torch.Tensor:
            def predict(latents: torch.Tensor, t: int) -> torch.Tensor:
                if latents.dim() == 5:
                    return from_frames(eps_at(to_frames(latents), t))
                return eps_at(latents, t)

            return sample_ddim(predict, x, noise, steps=steps, timesteps=self._timesteps,
                               alphas_cumprod=self._alphas_cumprod, config=self.schedule, stage=stage,
                               callback=callback)

        shape = tuple(to_frames(noise).shape) if noise.dim() == 5 else tuple(noise.shape)
        return self._session(video, shape, run, body)

    # Sessions ------------------------------------------------------------------------------------------------
    def _session(self, video: bool, shape: Sequence[int], timesteps: List[int], body: Callable[[EpsAt], Any]) -> Any:
        """Run ``body(eps_at)`` as the sampler function of one ``comfy.sample.sample_custom`` call on the video
        MODEL (motion on, inside ADE's session) or the image MODEL (motion off)."""
        model = self.video_model if video else self.image_model
        result: dict = {}

        def sampler_function(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                             callback: Optional[Callable] = None, disable: Any = None) -> torch.Tensor:
            extra_args = extra_args or {}
            steps_done = [0]

            def eps_at(frames: torch.Tensor, t: int) -> torch.Tensor:
                shim.check_interrupt()
                sigma = self.sigma(t)
                x_k = frames.to(device=x.device, dtype=x.dtype) * (1.0 + sigma**2) ** 0.5
                sigma_in = torch.full((x_k.shape[0],), sigma, device=x.device, dtype=x.dtype)
                denoised = model_k(x_k, sigma_in, **extra_args)
                self.unet_calls += 1
                if callback is not None:  # ADE counts its steps here (ADGS.current_step: context scheduling)
                    callback({"x": x_k, "i": steps_done[0], "sigma": sigma_in, "sigma_hat": sigma_in,
                              "denoised": denoised})
                steps_done[0] += 1
                return ((x_k - denoised) / sigma).to(device=frames.device, dtype=torch.float32)

            result["value"] = body(eps_at)
            return x

        zeros = torch.zeros(tuple(shape), dtype=torch.float32)
        sigmas = torch.tensor([self.sigma(t) for t in timesteps] + [0.0], dtype=torch.float32)
        self.sessions["video" if video else "image"] += 1
        shim.sample().sample_custom(model, zeros, self.guidance, shim.ksampler(sampler_function), sigmas,
                                    self.positive, self.negative, zeros, disable_pbar=True, seed=self.seed)
        if "value" not in result:
            raise RuntimeError("the ComfyUI sampling session returned without running I4VGen's stage")
        return result["value"]

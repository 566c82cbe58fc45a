"""The host sampler's CFG denoiser called by hand, one noise prediction at a time, as a sampler step calls it: NI-VSDS,
EVS and the timestep samplers' regeneration. One prepared sampler per stage.

Details: docs/webui-host.md §Backbone.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional

import torch

from ..core.settings import I4VGenSettings
from . import shim
from .animatediff import AnimateDiffJob
from .control import GridClock, JobControl
from .sampler_inputs import is_timestep_sampler, repeat_conds


class DirectCalls:
    """Single eps predictions for one ``HostDenoiser``; ``new_sampler(counted=...)`` makes its fresh samplers."""

    def __init__(
        self,
        p: Any,
        ad: AnimateDiffJob,
        settings: I4VGenSettings,
        *,
        timesteps: List[int],
        clock: GridClock,
        new_sampler: Callable[..., Any],
        guidance: Optional[float],
        control: Optional[JobControl],
    ):
        self.p, self.ad, self.settings = p, ad, settings
        self.timesteps, self.clock, self.new_sampler = timesteps, clock, new_sampler
        self.guidance = guidance  # None: the job's CFG scale
        self.control = control
        self._samplers: Dict[str, Any] = {}

    def sampler(self, stage: str, *, counted: bool) -> Any:
        if stage not in self._samplers:
            steps = self.settings.nivsds_iterations if stage == "ni-vsds" else len(self.timesteps)
            self._samplers[stage] = self._prepare(self.new_sampler(counted=counted), steps)
            if stage == "ni-vsds":  # EVS keeps one bar over its stages (progress.StageProgress.evs_started)
                state = shim.state()
                state.sampling_steps, state.sampling_step = steps, 0
        return self._samplers[stage]

    def image_eps(self, sampler: Any, frames: torch.Tensor, t: int) -> torch.Tensor:
        """Frames as separate images (motion module out), the head prompt's conds repeated per image. The CFG
        denoiser's step is the timestep's index on the S-step grid, so prompt editing picks the right prompt. Chunks
        of AnimateDiff's context size keep a call no larger than one video call."""
        index = self.timesteps.index(int(t)) if int(t) in self.timesteps else 0
        out: List[torch.Tensor] = []
        for chunk in torch.split(frames, max(1, self.ad.context_size)):
            c, uc = repeat_conds(self.p.c, self.p.uc, chunk.shape[0])
            sampler.model_wrap_cfg.step = index
            start = sum(o.shape[0] for o in out)
            with self._control_rows(start, start + chunk.shape[0]):
                out.append(self.eps(sampler, chunk, t, c, uc))
        return torch.cat(out)

    def _control_rows(self, start: int, stop: int) -> contextlib.AbstractContextManager:
        """ControlNet's per-frame control cut to frames ``start:stop`` for an image-mode call."""
        return self.control.frame_rows(start, stop) if self.control is not None else contextlib.nullcontext()

    def eps(self, sampler: Any, frames: torch.Tensor, t: int, c: Any, uc: Any) -> torch.Tensor:
        """One call of the sampler's CFG denoiser on (N, 4, h, w) latents at training timestep ``t`` -> eps."""
        p = self.p
        scale = p.cfg_scale if self.guidance is None else self.guidance
        self.clock.at_timestep(t)
        abar = p.sd_model.alphas_cumprod.float()[int(t)].to(frames.device)
        image_cond = p.txt2img_image_conditioning(frames)
        if is_timestep_sampler(sampler):
            t_in = torch.full((frames.shape[0],), float(t), device=frames.device)
            return sampler.model_wrap_cfg(frames, t_in, uncond=uc, cond=c, cond_scale=scale,
                                          s_min_uncond=sampler.s_min_uncond, image_cond=image_cond).float()
        sigma = ((1 - abar) / abar).sqrt()
        x_k = frames / abar.sqrt()
        sigma_in = sigma.repeat(frames.shape[0])
        x0 = sampler.model_wrap_cfg(x_k, sigma_in, uncond=uc, cond=c, cond_scale=scale,
                                    s_min_uncond=sampler.s_min_uncond, image_cond=image_cond)
        return (x_k - x0.float()) / sigma

    def _prepare(self, sampler: Any, steps: int) -> Any:
        """What ``Sampler.sample`` sets up before its loop, for calling ``model_wrap_cfg`` by hand
        (``sd_samplers_common.Sampler.initialize`` / ``launch_sampling``)."""
        p = self.p
        sampler.initialize(p)
        sampler.model_wrap_cfg.steps = steps
        sampler.model_wrap_cfg.total_steps = sampler.config.total_steps(steps) if sampler.config else steps
        sampler.sampler_extra_args = {
            "cond": p.c, "image_cond": None, "uncond": p.uc, "cond_scale": p.cfg_scale, "s_min_uncond": sampler.s_min_uncond,
        }
        return sampler

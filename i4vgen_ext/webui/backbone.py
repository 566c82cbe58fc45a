"""The host's model behind the core's ``Denoiser`` protocol: A1111's samplers and CFG denoiser with AnimateDiff,
for the image-mode anchors, single noise predictions (NI-VSDS, EVS), EVS's attention record/inject and the
video regeneration.

Details: docs/webui-host.md §Backbone.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ..core.denoiser import StepCallback, notify
from ..core.sampling import sample_ddim
from ..core.schedule import sampling_timesteps
from ..core.settings import I4VGenSettings
from . import shim
from .animatediff import AnimateDiffJob, MotionSwitch, motion_module_ejected
from .attention import HostAttentionFeatures
from .control import GridClock, JobControl
from .direct_calls import DirectCalls
from .sampler_inputs import borrowed, from_host_video, is_timestep_sampler, repeat_conds, to_host_video

# (phase, video mode) -> the stage a single noise prediction belongs to.
STAGES = {("i4vgen", True): "ni-vsds", ("evs", False): "evs-image", ("evs", True): "evs-video",
          ("evs-inversion", True): "evs-inversion"}


class HostDenoiser:
    """``i4vgen_ext.core.denoiser.Denoiser`` over the running WebUI for one batch of one job."""

    def __init__(
        self,
        p: Any,
        ad: AnimateDiffJob,
        settings: I4VGenSettings,
        *,
        anchor_rngs: Sequence[Any],
        chunk_size: int,
        on_anchor_chunk: Optional[Callable[[int, int, bool], None]] = None,
        on_stage: Optional[Callable[[str], None]] = None,
        motion: Optional[MotionSwitch] = None,
        phase: str = "i4vgen",
        guidance: Optional[float] = None,
        control: Optional[JobControl] = None,
    ):
        self.p, self.ad, self.settings = p, ad, settings
        self.anchor_rngs, self.chunk_size = list(anchor_rngs), chunk_size
        self.on_anchor_chunk, self.on_stage = on_anchor_chunk, on_stage
        self.unet_calls = 0
        self.last_video: Optional[torch.Tensor] = None  # latest video-mode latent, returned on interrupt
        self._timesteps = sampling_timesteps(p.steps, settings.schedule)
        self.motion = motion if motion is not None else MotionSwitch(p.sd_model, ad)
        self.phase = phase
        self._attention = HostAttentionFeatures(lambda: self.p.sd_model.model.diffusion_model)
        self.control = control  # ControlNet's units when it hooked this job
        self.clock = GridClock(self._timesteps)  # for ControlNet's guidance start/end
        self._direct = DirectCalls(p, ad, settings, timesteps=self._timesteps, clock=self.clock,
                                   new_sampler=self._new_sampler, guidance=guidance, control=control)

    def variant(self, *, phase: str, guidance: Optional[float] = None) -> "HostDenoiser":
        """Another denoiser over the same job and the same motion switch (e.g. EVS's inversion without CFG)."""
        return HostDenoiser(self.p, self.ad, self.settings, anchor_rngs=self.anchor_rngs, chunk_size=self.chunk_size,
                            on_stage=self.on_stage, motion=self.motion, phase=phase, guidance=guidance,
                            control=self.control)

    # Protocol properties ---------------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.p.sd_model.alphas_cumprod.float()

    @property
    def timesteps(self) -> List[int]:
        return self._timesteps

    # Per-job state, set by the job through these methods only ----------------------------------------------
    def bind_job_sampler(self) -> None:
        """Make the job's sampler (``p.sampler``, used by regeneration) now, while the motion module is injected."""
        self.p.sampler = self._new_sampler()

    def keep_partial(self, video: torch.Tensor) -> None:
        """Remember a finished video (1, 4, F, h, w): what an interrupt in a later stage returns."""
        self.last_video = to_host_video(video)

    # Helpers -----------------------------------------------------------------------------------------------
    def _new_sampler(self, *, counted: bool = True) -> Any:
        sampler = shim.sd_samplers().create_sampler(self.p.sampler_name, self.p.sd_model)
        if counted:
            self._count_calls(sampler)
        if self.control is not None:
            self.clock.attach(sampler)
        return sampler

    def _count_calls(self, sampler: Any) -> None:
        def count(*_: Any) -> None:
            self.unet_calls += 1

        sampler.model_wrap_cfg.register_forward_hook(count)

    def _check_interrupt(self) -> None:
        state = shim.state()
        if state.interrupted or state.skipped:
            raise shim.interrupted_exception()

    @contextlib.contextmanager
    def _step_events(self, sampler: Any, stage: str, total: int, callback: Optional[StepCallback]) -> Iterator[None]:
        """Forward the host sampler's per-step callback to the core's callback (instance attribute, removed after)."""
        host_callback = sampler.callback_state

        def on_step(d: Dict[str, Any]) -> None:
            host_callback(d)
            self.clock.after_step(d["i"])
            notify(callback, stage, int(d["i"]) + 1, total, -1)

        self.clock.begin_run()
        with borrowed(sampler, callback_state=on_step):
            yield

    # Optional capability: EVS's Selective Feature Injection ---------------------------------------------------
    def record_attention(self, layers: str = "all", *, timesteps: Optional[Sequence[int]] = None):
        return self._attention.record(layers, timesteps=timesteps)

    def inject_attention(self, store: Any, gamma: float, layers: str = "all"):
        return self._attention.inject(store, gamma, layers)

    # Denoiser protocol ---------------------------------------------------------------------------------------
    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool) -> torch.Tensor:
        stage = STAGES.get((self.phase, video))
        if stage is None:
            raise ValueError(f"no {'video' if video else 'image'}-mode noise prediction in the {self.phase!r} phase")
        if video:
            self.motion.video()
        else:
            self.motion.image()
        if self.on_stage is not None:
            self.on_stage(stage)
        sampler = self._direct.sampler(stage, counted=video)
        if video:
            # The noised video this call denoises is what an interrupt returns, as the host's samplers return theirs.
            self.last_video = to_host_video(x).float()
            with self._attention.during_call(t):
                eps = self._direct.eps(sampler, self.last_video, t, self.p.c, self.p.uc)
        else:
            eps = self._direct.image_eps(sampler, x.float(), t)
            self.unet_calls += 1  # one CFG evaluation of all frames, however many chunks it took
        self._check_interrupt()
        return from_host_video(eps.float()) if video else eps.float()

    def denoise(self, x: Optional[torch.Tensor], noise: torch.Tensor, *, steps: int, video: bool, stage: str,
                callback: Optional[StepCallback] = None) -> torch.Tensor:
        if not video and x is None:
            return self._anchors(noise, steps, stage, callback)
        if video and x is not None:
            return self._regenerate(x, noise, steps, stage, callback)
        if video and x is None and steps == self.p.steps:
            return self._plain(noise, stage, callback)
        raise ValueError("the WebUI backbone runs full denoises (image mode: anchors; video mode: AnimateDiff's own "
                         "video) and partial ones in video mode")

    def _plain(self, noise: torch.Tensor, stage: str, callback: Optional[StepCallback]) -> torch.Tensor:
        """AnimateDiff's own video, made as the host's txt2img ``sample`` makes it from ``noise`` (its first draw
        of ``p.rng``): a fresh sampler of the user's choice as ``p.sampler``, the noise multiplier, the scripts'
        ``process_before_every_sampling``, then ``Sampler.sample`` with the motion module in."""
        p = self.p
        if self.on_stage is not None:
            self.on_stage(stage)
        self.motion.video()
        p.sampler = self._new_sampler()
        self.clock.offset = 0
        x = to_host_video(noise)
        if getattr(p, "initial_noise_multiplier", 1.0) != 1.0:
            p.extra_generation_params["Noise multiplier"] = p.initial_noise_multiplier
            x = x * p.initial_noise_multiplier
        if p.scripts is not None and hasattr(p.scripts, "process_before_every_sampling"):
            p.scripts.process_before_every_sampling(p=p, x=x, noise=x, c=p.c, uc=p.uc)
        with self._step_events(p.sampler, stage, p.steps, callback):
            samples = p.sampler.sample(p, x, p.c, p.uc, image_conditioning=p.txt2img_image_conditioning(x))
        self.last_video = samples
        self._check_interrupt()  # the host's sampler returns its last latent when interrupted
        return from_host_video(samples.float())

    def _anchors(self, noise: torch.Tensor, steps: int, stage: str, callback: Optional[StepCallback]) -> torch.Tensor:
        p = self.p
        if steps != p.steps:
            raise ValueError(f"anchors run the job's {p.steps} steps, not {steps}")
        chunks = list(torch.split(noise, self.chunk_size))
        if len(chunks) != len(self.anchor_rngs):
            raise ValueError(f"{len(chunks)} candidate chunks but {len(self.anchor_rngs)} seed generators")
        out = []
        self.clock.offset = 0
        first_frame = self.control.first_frame() if self.control is not None else contextlib.nullcontext()
        with motion_module_ejected(p.sd_model, self.ad), first_frame:
            for index, (chunk, chunk_rng) in enumerate(zip(chunks, self.anchor_rngs)):
                if self.on_anchor_chunk is not None:
                    self.on_anchor_chunk(index, len(chunks), False)
                out.append(self._anchor_chunk(chunk, chunk_rng, stage, callback))
                if self.on_anchor_chunk is not None:
                    self.on_anchor_chunk(index, len(chunks), True)
        return torch.cat(out)

    def _anchor_chunk(self, noise: torch.Tensor, chunk_rng: Any, stage: str, callback: Optional[StepCallback]) -> torch.Tensor:
        """One ``Sampler.sample`` over ``n`` candidates. ``p.rng``, ``p.seeds``, ``p.all_seeds``, ``p.batch_size``
        and ``p.iteration`` are lent to the chunk: ancestral samplers draw from ``p.rng`` (``TorchHijack``) and
        brownian ones seed from ``p.all_seeds[iteration*batch_size:...]`` (``Sampler.create_noise_sampler``)."""
        p = self.p
        n = noise.shape[0]
        sampler = self._new_sampler()
        c, uc = repeat_conds(p.c, p.uc, n)
        seeds = list(chunk_rng.seeds)
        with borrowed(p, rng=chunk_rng, seeds=seeds, all_seeds=seeds, batch_size=n, iteration=0), \
                self._step_events(sampler, stage, p.steps, callback):
            latents = sampler.sample(p, noise, c, uc, image_conditioning=p.txt2img_image_conditioning(noise))
        self._check_interrupt()
        return latents.float()

    def _regenerate(self, x: torch.Tensor, noise: torch.Tensor, steps: int, stage: str,
                    callback: Optional[StepCallback]) -> torch.Tensor:
        """Img2img with the job's sampler (``p.sampler``, made while the motion module is injected) from the
        NI-VSDS video. ``setup_img2img_steps`` gives ``t_enc = int(strength * S)`` and k-diffusion samplers run
        ``t_enc + 1`` steps, so strength ``(n - 0.5) / S`` runs exactly ``n`` steps. A1111's DDIM-family img2img
        would run ``t_enc - 1``, so those samplers take ``_regenerate_ddim`` instead."""
        p = self.p
        if is_timestep_sampler(p.sampler):
            return self._regenerate_ddim(x, noise, steps, stage, callback)
        if self.on_stage is not None:
            self.on_stage(stage)
        frames, frame_noise = to_host_video(x).float(), to_host_video(noise).float()
        self.last_video = frames
        sampler = p.sampler
        strength = (steps - 0.5) / p.steps
        self.clock.offset = p.steps - steps
        with borrowed(p, denoising_strength=strength), self._step_events(sampler, stage, steps, callback):
            latents = sampler.sample_img2img(p, frames, frame_noise, p.c, p.uc, steps=None,
                                             image_conditioning=p.txt2img_image_conditioning(frames))
        self.last_video = latents
        self._check_interrupt()
        return from_host_video(latents.float())

    def _regenerate_ddim(self, x: torch.Tensor, noise: torch.Tensor, steps: int, stage: str,
                         callback: Optional[StepCallback]) -> torch.Tensor:
        """Regeneration for the timestep samplers (DDIM, PLMS, UniPC). A1111's ``CompVisSampler.sample_img2img``
        noises to ``timesteps[t_enc]`` but evaluates ``timesteps[t_enc - 1] .. timesteps[1]``: ``t_enc - 1``
        calls, none at all for ``n_re <= 2``. So the method's own DDIM loop runs on the host's CFG denoiser."""
        if self.on_stage is not None:
            self.on_stage(stage)
        self.motion.video()
        sampler = self._direct.sampler(stage, counted=True)

        def predict(latents: torch.Tensor, t: int) -> torch.Tensor:
            frames = to_host_video(latents).float()
            self.last_video = frames
            eps = self._direct.eps(sampler, frames, t, self.p.c, self.p.uc)
            self._check_interrupt()
            return from_host_video(eps.float())

        latents = sample_ddim(predict, x, noise, steps=steps, timesteps=self._timesteps,
                              alphas_cumprod=self.alphas_cumprod, config=self.settings.schedule, stage=stage,
                              callback=callback)
        self.last_video = to_host_video(latents).float()
        return latents

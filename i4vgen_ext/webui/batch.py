"""One batch of an I4VGen job in A1111 (one video of ``p.batch_size`` frames) in place of ``p.sample``: the core's
``run_mode`` over the host's denoiser, with the host's noise, and the batch's record.

Details: docs/webui-host.md §Job.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from ..core.compose import RunNoises, RunObserver, run_mode
from ..core.noise import Noises
from ..core.settings import I4VGenSettings
from ..errors import JobError
from . import shim
from .anchor import encode_anchor
from .args import ScriptArgs
from .backbone import HostDenoiser
from .control import JobControl
from .infotext import infotext_value, stopped_value
from .plan import BORROWED_FIELDS, BatchOutcome, JobPlan, resolve_settings
from .progress import StageProgress
from .ranking import RankerCache
from .refine import DRAWS_BEFORE_EVS, host_evs_noises
from .results import summary, timing
from .sampler_inputs import from_host_video, latent_shape, to_host_video

log = logging.getLogger("i4vgen")


def candidate_rngs(p: Any, candidates: int, chunk_size: int) -> List[Any]:
    """Candidate k starts from the host's noise for seed ``seeds[0] + k``, i.e. frame k's noise when k < F
    (``modules/rng.py`` ``ImageRNG``: same randn source, subseed and seed-resize handling as the job)."""
    ImageRNG = shim.rng().ImageRNG
    seeds = [int(p.seeds[0]) + k for k in range(candidates)]
    subseeds = [int(p.subseeds[0]) + k for k in range(candidates)]
    return [
        ImageRNG(latent_shape(p), seeds[i:i + chunk_size], subseeds=subseeds[i:i + chunk_size],
                 subseed_strength=p.subseed_strength, seed_resize_from_h=p.seed_resize_from_h,
                 seed_resize_from_w=p.seed_resize_from_w)
        for i in range(0, candidates, chunk_size)
    ]


def decoder(p: Any, progress: StageProgress) -> Callable[[torch.Tensor], list]:
    from PIL import Image

    def decode(latents: torch.Tensor) -> list:
        progress.stage("ranking")
        state = shim.state()
        state.sampling_steps, state.sampling_step = 1, 0
        processing, devices = shim.processing(), shim.devices()
        decoded = processing.decode_latent_batch(p.sd_model, latents, target_device=devices.cpu, check_for_nans=True)
        images = []
        for sample in decoded:
            array = ((sample.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            images.append(Image.fromarray(array))
        return images

    return decode


class _BatchObserver(RunObserver):
    """The run's phase boundaries in the WebUI: a video stage that EVS follows ends its progress job, keeps its
    video for an interrupt during EVS, and EVS gets one bar."""

    def __init__(self, denoiser: HostDenoiser, progress: StageProgress, runs_evs: bool) -> None:
        self.denoiser, self.progress, self.runs_evs = denoiser, progress, runs_evs

    def phase_started(self, phase: str, steps: int) -> None:
        if phase == "evs":
            self.progress.evs_started(steps)

    def phase_finished(self, phase: str, latents: torch.Tensor) -> None:
        if phase == "video" and self.runs_evs:
            self.progress.stage_finished()
            self.denoiser.keep_partial(latents)


def sample_batch(p: Any, plan: JobPlan, ranker_cache: RankerCache, control: Optional[JobControl] = None) -> torch.Tensor:
    """One batch (one video of ``p.batch_size`` frames) in place of ``p.sample``: the core's ``run_mode`` over the
    host's denoiser, with the host's noise."""
    request = plan.request
    progress = StageProgress(shim.state(), tqdm=getattr(shim.shared(), "total_tqdm", None), anchor_chunks=plan.chunks)
    progress.begin()
    saved = {name: vars(p)[name] for name in BORROWED_FIELDS if name in vars(p)}
    frames = int(p.batch_size)
    denoiser: Optional[HostDenoiser] = None
    settings: Optional[I4VGenSettings] = None
    noises: Optional[RunNoises] = None
    try:
        settings = resolve_settings(p, request, plan.default_preset, p.seeds[0])
        ranked = request.runs_i4vgen and request.anchor_image is None
        rngs = candidate_rngs(p, settings.candidates, plan.chunk_size) if ranked else []
        denoiser = HostDenoiser(p, plan.ad, settings, anchor_rngs=rngs, chunk_size=plan.chunk_size,
                                on_anchor_chunk=progress.on_anchor_chunk, on_stage=progress.stage, control=control)
        seconds: Dict[str, float] = {}
        anchor, ranker, label = None, None, None
        if request.anchor_image is not None:  # paper 4.5: no candidates, no ranker
            progress.stage("encode-anchor")
            started = time.perf_counter()
            anchor = encode_anchor(p, request.anchor_image, sample=request.anchor_sample, seed=int(p.seeds[0]))
            anchor = anchor.to(shim.devices().device)
            seconds["encode_anchor"] = time.perf_counter() - started
        elif ranked:
            try:
                ranker, label = ranker_cache.get(settings, device=shim.devices().device, models_dir=plan.models_dir)
            except Exception as error:  # RankerLoadError (and friends): fallback 'error' stops the job here
                raise JobError(f"I4VGen: {error}\n(set 'ranker fallback' to 'none' to continue with candidate 0, "
                                  "or choose a manual anchor index)") from error
        noises = host_noises(p, request, settings, rngs)
        if request.runs_i4vgen:
            denoiser.bind_job_sampler()
        evs = settings.evs() if request.runs_evs else None
        result = run_mode(
            denoiser, settings, noises, evs=evs, anchor=anchor, ranker=ranker, ranker_label=label,
            decode_images=decoder(p, progress), keep_candidate_images=request.return_candidates,
            evs_denoiser=denoiser.variant(phase="evs") if evs is not None else None,
            # Inversion is run without CFG (guidance 1), as DDIM inversion usually is; EVS does not say.
            inversion_denoiser=denoiser.variant(phase="evs-inversion", guidance=1.0) if evs and evs.inversion else None,
            callback=partial_keeper(denoiser, progress), observer=_BatchObserver(denoiser, progress, request.runs_evs),
            anchor_passes=len(rngs) or 1,
        )
        seconds.update(result.seconds)
        calls = {k: v for k, v in result.unet_calls.items() if k != "total"}
        outcome = BatchOutcome(int(p.iteration), "", result.anchor_index, result.ranker, result.scores,
                               result.candidate_images, calls, seconds, progress_plan=result.plan,
                               progress_reported=result.reported)
        record(p, plan, settings, outcome)
        return to_host_video(result.video)
    except shim.interrupted_exception():
        action = "skipped" if shim.state().skipped else "interrupted"
        log.warning(f"I4VGen: video {int(p.iteration) + 1} {action} during {progress.current}; the frames are the "
                    "unfinished video")
        value = stopped_value(settings, request, action, progress.current) if settings is not None else ""
        plan.outcomes.append(BatchOutcome(int(p.iteration), value, None, None, None, None, {}, {}, interrupted=True,
                                          stopped=f"{action} during {progress.current}"))
        return unfinished_video(denoiser, noises, frames, p)
    finally:
        if denoiser is not None:
            denoiser.motion.close()
        for name in BORROWED_FIELDS:
            if name in saved:
                setattr(p, name, saved[name])
            else:
                vars(p).pop(name, None)
        if not plan.ad.injected:  # never hand control back with the module ejected
            plan.ad.motion.inject(p.sd_model, plan.ad.model_name)
        if not plan.keep_ranker:
            ranker_cache.release()
        progress.end()
        plan.progress_log.extend(progress.log)


def unfinished_video(denoiser: Optional[HostDenoiser], noises: Optional[RunNoises], frames: int, p: Any) -> torch.Tensor:
    """What an interrupted video returns, like a plain job's sampler: the latent being denoised when it stopped
    (NI-VSDS's noised video, the regeneration sampler's latent), or, before any video exists, the noise the video
    starts from: distinct frames, never a still that the GIF writer folds into one frame."""
    partial = denoiser.last_video if denoiser is not None else None
    if partial is not None and partial.shape[0] == frames:
        return partial
    start = None
    if noises is not None:
        start = noises.i4vgen.nivsds if noises.i4vgen is not None else noises.plain
    if start is not None and start.shape[2] == frames:
        return to_host_video(start).to(shim.devices().device)
    return torch.zeros((frames, *latent_shape(p)), device=shim.devices().device)


def partial_keeper(denoiser: HostDenoiser, progress: StageProgress) -> Callable[[Any], None]:
    """The core's step callback: the progress bar, and the stage's current video kept for an interrupt."""

    def on_step(event: Any) -> None:
        if event.latents is not None:
            denoiser.keep_partial(event.latents)
        progress(event)

    return on_step


def host_noises(p: Any, request: ScriptArgs, settings: I4VGenSettings, rngs: List[Any]) -> RunNoises:
    """The host's own noise: candidate k from seed ``seeds[0] + k``; the batch's first ``p.rng`` draw starts
    AnimateDiff's video (mode "evs") or is NI-VSDS's fixed noise, the next one regeneration's fresh noise; EVS
    continues private copies of the per-frame generators (``refine.host_evs_noises``)."""
    evs = None
    if request.runs_evs:
        draws, fresh = DRAWS_BEFORE_EVS[request.mode], settings.evs_fresh_bridge_noise
        evs = lambda shape: host_evs_noises(p, draws_before=draws, fresh_bridge_noise=fresh)  # noqa: E731
    if not request.runs_i4vgen:
        return RunNoises(plain=from_host_video(p.rng.next()), evs=evs)
    if rngs:
        candidate_noise = torch.cat([r.next() for r in rngs]).float()
    else:
        candidate_noise = torch.zeros((0, *latent_shape(p)))
    video_noise = p.rng.next()
    if p.scripts is not None and hasattr(p.scripts, "process_before_every_sampling"):
        p.scripts.process_before_every_sampling(p=p, x=video_noise, noise=video_noise, c=p.c, uc=p.uc)
    regeneration_noise = p.rng.next()
    return RunNoises(Noises(candidate_noise, from_host_video(video_noise.float()),
                            from_host_video(regeneration_noise.float())), evs=evs)


def record(p: Any, plan: JobPlan, settings: I4VGenSettings, outcome: BatchOutcome) -> None:
    """The batch's infotext (settings, mode, EVS settings, UNet calls per stage and in total) and log line."""
    outcome.unet_calls["total"] = sum(v for k, v in outcome.unet_calls.items() if k != "total")
    outcome.infotext = infotext_value(
        settings, anchor_index=outcome.anchor_index, ranker=outcome.ranker, unet_calls=outcome.unet_calls,
        return_candidates=plan.request.return_candidates, extras=plan.request.extra_record(),
    )
    plan.outcomes.append(outcome)
    log.info(f"I4VGen: {summary(outcome)}; {timing(outcome)}")

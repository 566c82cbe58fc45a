"""One run of a mode over a ``Denoiser``: the composition the CLI, the WebUI job and the benchmark all call.

A mode makes a video (plain AnimateDiff, or I4VGen from ranked candidates or from a given anchor latent) and, with
"+evs", refines it with EVS. ``plan_run`` gives every stage's progress steps before the first UNet call;
``run_mode`` returns one ``RunResult`` that owns the UNet calls per stage, the timesteps, the seconds and that plan.
Noise is passed in (``RunNoises``) so each entry point keeps its own reproducibility contract."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .denoiser import Denoiser, StepCallback, StepEvent
from .evs import EVSNoises, EVSResult, EVSSettings, draw_evs_noises, evs_refine
from .noise import Noises, draw_noises, seeded_generator
from .pipeline import I4VGenResult, ImageDecoder, progress_plan, run_i4vgen
from .settings import MODES, I4VGenSettings, SettingsError
from .stages import plain_video

EVSNoiseSource = Callable[[Tuple[int, ...]], EVSNoises]  # video shape -> EVS noises, drawn after the video stage
# What each stage is called where a person reads it (progress text, messages).
STAGE_LABELS = {"anchors": "anchor images", "ranking": "ranking candidates", "ni-vsds": "NI-VSDS",
                "regeneration": "regeneration", "encode-anchor": "encoding the anchor image",
                "plain": "AnimateDiff video", "evs-image": "EVS image steps", "evs-video": "EVS video block",
                "evs-inversion": "EVS inversion"}
# The unet_calls keys of EVS's stages (flat, beside the video stage's own keys).
EVS_CALL_KEYS = {"image": "evs_image", "video": "evs_video", "inversion": "evs_inversion"}


@dataclass(frozen=True)
class RunNoises:
    """``i4vgen``: candidates (may be empty when an anchor is given), NI-VSDS and regeneration noise; ``plain``: the
    (1, 4, F, h, w) start of a plain video; ``evs``: draws EVS's noises once the video exists."""

    i4vgen: Optional[Noises] = None
    plain: Optional[torch.Tensor] = None
    evs: Optional[EVSNoiseSource] = None


class RunObserver:
    """Hooks at the boundaries of a run's two phases ("video", then "evs"); the WebUI moves its progress bar and
    keeps the partial video with them. The default does nothing."""

    def phase_started(self, phase: str, steps: int) -> None:
        pass

    def phase_finished(self, phase: str, latents: torch.Tensor) -> None:
        pass


@dataclass
class RunResult:
    mode: str
    video: torch.Tensor  # (1, 4, F, h, w), the final latents
    base_video: torch.Tensor  # the video before EVS (== video without EVS)
    plan: Dict[str, int]  # progress steps per stage, known before the first call
    reported: Dict[str, int]  # progress steps each stage did report (equal to ``plan`` in a whole run)
    unet_calls: Dict[str, int]  # per stage (flat), then "total"
    timesteps: Dict[str, List[int]]
    seconds: Dict[str, float] = field(default_factory=dict)
    i4vgen: Optional[I4VGenResult] = None
    evs: Optional[EVSResult] = None

    @property
    def anchor_index(self) -> Optional[int]:
        """The candidate kept; -1 for a given anchor image; None without an anchor (plain modes)."""
        return self.i4vgen.anchor_index if self.i4vgen is not None else None

    @property
    def ranker(self) -> Optional[str]:
        return self.i4vgen.ranker if self.i4vgen is not None else None

    @property
    def scores(self) -> Optional[List[float]]:
        return self.i4vgen.scores if self.i4vgen is not None else None

    @property
    def candidate_images(self) -> Optional[list]:
        return self.i4vgen.candidate_images if self.i4vgen is not None else None

    @property
    def total_steps(self) -> int:
        return sum(self.plan.values())


def seeded_noises(settings: I4VGenSettings, latent_height: int, latent_width: int, *,
                  evs: Optional[EVSSettings] = None) -> RunNoises:
    """The standalone noise contract (CLI and benchmark): candidates, NI-VSDS and regeneration noise from one CPU
    generator seeded with ``settings.seed`` (``noise.draw_noises``); a plain video starts from the first
    (1, 4, F, h, w) draw of the seed, as diffusers' pipeline does; EVS's noises continue the generator."""
    generator = seeded_generator(settings.seed)
    noises = draw_noises(generator, frames=settings.frames, candidates=settings.candidates,
                         latent_height=latent_height, latent_width=latent_width)
    plain = None
    if settings.mode.startswith("plain"):
        plain = torch.randn((1, 4, settings.frames, latent_height, latent_width),
                            generator=seeded_generator(settings.seed))
    evs = evs or settings.evs()
    return RunNoises(noises, plain, lambda shape: draw_evs_noises(generator, shape,
                                                                  fresh_bridge_noise=evs.fresh_bridge_noise))


def check_mode(mode: str, *, anchor_given: bool) -> None:
    if mode not in MODES:
        raise SettingsError("mode", mode, "one of " + ", ".join(MODES))
    if anchor_given and mode.startswith("plain"):
        raise SettingsError("anchor_image", "(given)", f"no anchor image with mode {mode} (an anchor needs i4vgen)")


def plan_run(mode: str, settings: I4VGenSettings, *, anchor_given: bool = False,
             evs: Optional[EVSSettings] = None, anchor_passes: int = 1) -> Dict[str, int]:
    """The steps each stage will report through the callback; their sum is the length of one progress bar.
    ``anchor_passes``: sampling runs the candidates take (the WebUI samples them in chunks, each reporting S)."""
    check_mode(mode, anchor_given=anchor_given)
    if mode.startswith("plain"):
        plan = {"plain": settings.steps}
    else:
        plan = progress_plan(settings, with_anchor_stage=not anchor_given)
        if "anchors" in plan:
            plan["anchors"] *= anchor_passes
    if mode.endswith("+evs"):
        plan.update((evs or settings.evs()).progress_steps(settings.steps))
    return plan


def call_plan(mode: str, settings: I4VGenSettings, *, anchor_given: bool = False,
              evs: Optional[EVSSettings] = None, anchor_passes: int = 1) -> Dict[str, int]:
    """The UNet calls a run makes, per stage, under ``RunResult.unet_calls``'s keys: S (plain); S per anchor pass, K
    and n_re (I4VGen); EVS's T2I steps plus the re-evaluated block step, n_V, and the inversion's steps up to t_V."""
    check_mode(mode, anchor_given=anchor_given)
    steps = settings.steps
    if mode.startswith("plain"):
        calls = {"plain": steps}
    else:
        calls = {"anchor": 0 if anchor_given else steps * anchor_passes, "nivsds": settings.nivsds_iterations,
                 "regeneration": settings.regen_steps}
    if mode.endswith("+evs"):
        evs = evs or settings.evs()
        plan = evs.plan(steps)
        block = 1 if plan["block_at"] else 0
        calls.update(evs_image=plan["image_steps"] + block, evs_video=plan["video_steps"],
                     evs_inversion=(steps - plan["video_start_index"]) * block if evs.inversion else 0)
    calls["total"] = sum(calls.values())
    return calls


@torch.no_grad()
def run_mode(
    denoiser: Denoiser,
    settings: I4VGenSettings,
    noises: RunNoises,
    *,
    mode: Optional[str] = None,
    evs: Optional[EVSSettings] = None,
    anchor: Optional[torch.Tensor] = None,
    ranker=None,
    ranker_label: Optional[str] = None,
    decode_images: Optional[ImageDecoder] = None,
    keep_candidate_images: bool = True,
    evs_denoiser: Optional[Denoiser] = None,
    inversion_denoiser: Optional[Denoiser] = None,
    callback: Optional[StepCallback] = None,
    observer: Optional[RunObserver] = None,
    anchor_passes: int = 1,
) -> RunResult:
    """Run ``mode`` (default: ``settings.mode``). ``anchor`` (4, h, w) replaces the candidates and ranking;
    ``evs`` (default: ``settings.evs()``) refines the video in the "+evs" modes with ``evs_denoiser`` (default: the
    same denoiser) and, with inversion, ``inversion_denoiser`` (default: the same)."""
    mode = settings.mode if mode is None else mode
    observer = observer or RunObserver()
    runs_evs = mode.endswith("+evs")
    evs = (evs or settings.evs()) if runs_evs else None
    plan = plan_run(mode, settings, anchor_given=anchor is not None, evs=evs, anchor_passes=anchor_passes)
    reported: Dict[str, int] = {}

    def report(event: StepEvent) -> None:
        reported[event.stage] = reported.get(event.stage, 0) + 1
        if user_callback is not None:
            user_callback(event)

    user_callback, callback = callback, report
    seconds: Dict[str, float] = {}
    i4vgen: Optional[I4VGenResult] = None

    observer.phase_started("video", sum(v for k, v in plan.items() if not k.startswith("evs")))
    if mode.startswith("plain"):
        if noises.plain is None:
            raise ValueError("a plain video needs RunNoises.plain")
        started = time.perf_counter()
        stage = plain_video(denoiser, noises.plain, callback=callback)
        seconds["plain"] = time.perf_counter() - started
        video, calls, timesteps = stage.latents, {"plain": stage.unet_calls}, {"plain": stage.timesteps}
    else:
        if noises.i4vgen is None:
            raise ValueError("I4VGen needs RunNoises.i4vgen")
        i4vgen = run_i4vgen(denoiser, settings, noises.i4vgen, ranker=ranker, ranker_label=ranker_label,
                            decode_images=decode_images, keep_candidate_images=keep_candidate_images, anchor=anchor,
                            callback=callback)
        video, seconds = i4vgen.video, dict(i4vgen.seconds)
        calls = {k: v for k, v in i4vgen.unet_calls.items() if k != "total"}
        timesteps = dict(i4vgen.timesteps)
    observer.phase_finished("video", video)
    base_video = video

    refined: Optional[EVSResult] = None
    if runs_evs:
        if noises.evs is None:
            raise ValueError("EVS needs RunNoises.evs")
        observer.phase_started("evs", sum(v for k, v in plan.items() if k.startswith("evs")))
        evs_noises = noises.evs(tuple(video.shape))
        evs_noises = EVSNoises(*(n.to(video) for n in (evs_noises.sdedit, evs_noises.to_video, evs_noises.to_image)))
        started = time.perf_counter()
        refined = evs_refine(evs_denoiser or denoiser, video, evs_noises, evs,
                             inversion_denoiser=inversion_denoiser, callback=callback)
        seconds["evs"] = time.perf_counter() - started
        calls.update({EVS_CALL_KEYS[k]: int(v) for k, v in refined.unet_calls.items() if k != "total"})
        timesteps.update({f"evs_{k}": v for k, v in refined.timesteps.items()})
        video = refined.latents
        observer.phase_finished("evs", video)

    calls["total"] = sum(calls.values())
    return RunResult(mode=mode, video=video, base_video=base_video, plan=plan, reported=reported, unet_calls=calls,
                     timesteps=timesteps, seconds=seconds, i4vgen=i4vgen, evs=refined)

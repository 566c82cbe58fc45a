"""I4VGen end to end, one stage per line, over a ``Denoiser`` (host-independent)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from .denoiser import Denoiser, StepCallback, notify
from .noise import Noises
from .settings import I4VGenSettings
from .stages import generate_candidates, ni_vsds, regenerate, select_anchor, static_video

ImageDecoder = Callable[[torch.Tensor], list]  # (N, 4, h, w) latents -> N PIL images


@dataclass
class I4VGenResult:
    video: torch.Tensor  # (1, 4, F, h, w), final latents
    nivsds: torch.Tensor  # (1, 4, F, h, w), after NI-VSDS
    candidates: Optional[torch.Tensor]  # (N, 4, h, w), None when the anchor was given
    candidate_images: Optional[list]
    scores: Optional[List[float]]
    anchor_index: int
    ranker: str
    timesteps: Dict[str, List[int]]
    unet_calls: Dict[str, int]
    seconds: Dict[str, float] = field(default_factory=dict)


def progress_plan(settings: I4VGenSettings, *, with_anchor_stage: bool = True) -> Dict[str, int]:
    """Steps each stage reports through the callback; the sum is the length of one progress bar."""
    plan = {"anchors": settings.steps, "ranking": 1} if with_anchor_stage else {}
    plan.update({"ni-vsds": settings.nivsds_iterations, "regeneration": settings.regen_steps})
    return plan


def run_i4vgen(
    denoiser: Denoiser,
    settings: I4VGenSettings,
    noises: Noises,
    *,
    ranker=None,
    ranker_label: Optional[str] = None,
    decode_images: Optional[ImageDecoder] = None,
    keep_candidate_images: bool = True,
    anchor: Optional[torch.Tensor] = None,
    callback: Optional[StepCallback] = None,
) -> I4VGenResult:
    """Run I4VGen with the noises given. ``ranker`` scores the decoded candidates (None: no ranking, candidate 0);
    ``settings.anchor_index >= 0`` overrides ranking; ``anchor`` (4, h, w) skips the anchor stage entirely."""
    seconds: Dict[str, float] = {}
    calls = {"anchor": 0, "nivsds": 0, "regeneration": 0}
    timesteps: Dict[str, List[int]] = {"anchor": []}
    candidates = images = scores = None
    index, label = 0, "none"

    # 1. Anchor image: N candidates in image mode, scored once, best kept.
    if anchor is None:
        started = time.perf_counter()
        stage = generate_candidates(denoiser, noises.candidates, callback=callback)
        candidates, calls["anchor"], timesteps["anchor"] = stage.latents, stage.unet_calls, stage.timesteps
        seconds["anchors"] = time.perf_counter() - started

        started = time.perf_counter()
        needs_scores = settings.anchor_index < 0 and ranker is not None
        if decode_images is not None and (needs_scores or keep_candidate_images):
            images = decode_images(candidates)
        seconds["decode_candidates"] = time.perf_counter() - started
        started = time.perf_counter()
        if settings.anchor_index >= 0:
            index, label = settings.anchor_index, "manual"
        elif needs_scores:
            if images is None:
                raise ValueError("ranking needs decode_images")
            scores = [float(s) for s in ranker.score(settings.prompt, images)]
            if len(scores) != len(images):
                raise ValueError(f"ranker returned {len(scores)} scores for {len(images)} candidates")
            index, label = select_anchor(scores), ranker_label or getattr(ranker, "name", "ranker")
        elif ranker_label:
            label = ranker_label
        seconds["ranking"] = time.perf_counter() - started
        notify(callback, "ranking", 1, 1, -1)
        anchor = candidates[index]
    else:
        index, label = -1, "anchor image"

    # 2. Static video: the anchor latent repeated F times.
    video = static_video(anchor, settings.frames)

    # 3. NI-VSDS with one fixed noise over the first K timesteps.
    started = time.perf_counter()
    stage = ni_vsds(
        denoiser, video, noises.nivsds.to(video), iterations=settings.nivsds_iterations,
        alphas=settings.alphas(), callback=callback,
    )
    nivsds, calls["nivsds"], timesteps["nivsds"] = stage.latents, stage.unet_calls, stage.timesteps
    seconds["nivsds"] = time.perf_counter() - started

    # 4. Regeneration from the p_re noise level with fresh noise.
    started = time.perf_counter()
    stage = regenerate(denoiser, nivsds, noises.regeneration.to(video), steps=settings.regen_steps, callback=callback)
    calls["regeneration"], timesteps["regeneration"] = stage.unet_calls, stage.timesteps
    seconds["regeneration"] = time.perf_counter() - started

    calls["total"] = calls["anchor"] + calls["nivsds"] + calls["regeneration"]
    return I4VGenResult(
        video=stage.latents, nivsds=nivsds, candidates=candidates, candidate_images=images, scores=scores,
        anchor_index=index, ranker=label, timesteps=timesteps, unet_calls=calls, seconds=seconds,
    )

"""EVS refinement of a batch's finished video inside the WebUI (modes "i4vgen+evs" and "evs").

Noise: the host's own per-frame generators for the batch (``rng.ImageRNG`` over ``p.seeds`` with the job's
subseed and seed-resize settings), continued past the draws the video stage took from them: AnimateDiff's own
video takes draw 1 (its starting noise), I4VGen takes draws 1 and 2 (NI-VSDS and regeneration noise). EVS then
takes the next draw for SDEdit and, with fresh bridge noise, one draw each for the bridge into and out of the
video block. A private copy of the generators is used, so the noise depends only on the seed settings, never on
how many draws an ancestral sampler made in between.

The T2I steps run in image mode (motion module out), the video block and the optional inversion in video mode;
``HostDenoiser``'s shared ``MotionSwitch`` switches only when the mode changes and is closed here, whatever
happens."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..core.evs import EVSNoises, EVSResult, EVSSettings, evs_refine
from . import shim
from .backbone import HostDenoiser, from_host_video, latent_shape
from .progress import StageProgress

DRAWS_BEFORE_EVS = {"evs": 1, "i4vgen+evs": 2}


def host_evs_noises(p: Any, *, draws_before: int, fresh_bridge_noise: bool) -> EVSNoises:
    generators = shim.rng().ImageRNG(
        latent_shape(p), p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength,
        seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w,
    )
    for _ in range(draws_before):
        generators.next()

    def draw() -> torch.Tensor:
        return from_host_video(generators.next().float())

    sdedit = draw()
    if not fresh_bridge_noise:
        return EVSNoises(sdedit, sdedit, sdedit)
    return EVSNoises(sdedit, draw(), draw())


def evs_steps(evs: EVSSettings, steps: int) -> int:
    """Progress steps EVS reports: T2I steps, video steps and, with inversion, the inversion steps."""
    plan = evs.plan(steps)
    inversion = steps - plan["video_start_index"] if evs.inversion and plan["block_at"] else 0
    return plan["image_steps"] + plan["video_steps"] + inversion


def refine_video(
    p: Any, denoiser: HostDenoiser, video: torch.Tensor, evs: EVSSettings, *, mode: str, progress: StageProgress,
) -> EVSResult:
    """EVS over ``video`` (1, 4, F, h, w). The motion module is back in when this returns or raises."""
    noises = host_evs_noises(p, draws_before=DRAWS_BEFORE_EVS[mode], fresh_bridge_noise=evs.fresh_bridge_noise)
    noises = EVSNoises(*(n.to(video) for n in (noises.sdedit, noises.to_video, noises.to_image)))
    denoiser.phase = "evs"
    # Inversion is run without CFG (guidance 1), as DDIM inversion usually is; EVS does not say.
    inverter = denoiser.variant(phase="evs-inversion", guidance=1.0) if evs.inversion else None
    progress.evs_started(evs_steps(evs, len(denoiser.timesteps)))
    try:
        return evs_refine(denoiser, video, noises, evs, inversion_denoiser=inverter, callback=progress)
    finally:
        denoiser.motion.close()


def evs_calls(result: EVSResult) -> Dict[str, int]:
    """EVS's UNet calls per stage under their infotext names: ``evs_image``, ``evs_video``, ``evs_inversion``."""
    return {f"evs_{kind}": int(result.unet_calls[kind]) for kind in ("image", "video", "inversion")}

"""EVS's noise inside the WebUI (modes "i4vgen+evs" and "evs"): the host's per-frame generators for the batch,
continued past the video stage's draws; the refinement itself is the core's, run by ``core.compose.run_mode``.

Details: docs/webui-host.md §EVS noise.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.evs import EVSNoises
from . import shim
from .sampler_inputs import from_host_video, latent_shape

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

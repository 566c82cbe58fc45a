"""The reproducibility contract: with a seed, every noise tensor comes from one CPU generator, in this order."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Noises:
    candidates: torch.Tensor  # (N, 4, h, w)
    nivsds: torch.Tensor  # (1, 4, F, h, w), the ONE noise NI-VSDS reuses at every iteration
    regeneration: torch.Tensor  # (1, 4, F, h, w), fresh


def draw_noises(
    generator: torch.Generator, *, frames: int, candidates: int, latent_height: int, latent_width: int
) -> Noises:
    """Candidate noise is drawn with a video's shape (1, 4, N, h, w) and split per frame, so with N = F candidate k
    starts from frame k of the noise a plain AnimateDiff run with this seed starts from."""
    cand = torch.randn((1, 4, candidates, latent_height, latent_width), generator=generator, dtype=torch.float32)
    video_shape = (1, 4, frames, latent_height, latent_width)
    nivsds = torch.randn(video_shape, generator=generator, dtype=torch.float32)
    regeneration = torch.randn(video_shape, generator=generator, dtype=torch.float32)
    return Noises(cand[0].permute(1, 0, 2, 3).contiguous(), nivsds, regeneration)


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))

"""What one I4VGen job in A1111 plans before sampling and what each batch of it records.

Details (hook plan): docs/webui-host.md §Job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..core.settings import I4VGenSettings
from . import shim
from .animatediff import AnimateDiffJob
from .args import ScriptArgs, build_settings

# Fields of ``p`` that I4VGen lends out during a batch; all are put back, and tests compare them.
BORROWED_FIELDS = ("rng", "seeds", "all_seeds", "batch_size", "iteration", "denoising_strength")


@dataclass
class BatchOutcome:
    iteration: int
    infotext: str
    anchor_index: Optional[int]  # -1: the user's anchor image; None: no anchor (mode "evs")
    ranker: Optional[str]
    scores: Optional[List[float]]
    candidate_images: Optional[list]
    unet_calls: Dict[str, int]  # per stage, then "total"
    seconds: Dict[str, float]
    interrupted: bool = False
    stopped: str = ""  # "interrupted during NI-VSDS", ...
    progress_plan: Dict[str, int] = field(default_factory=dict)  # steps per stage, planned before the first call
    progress_reported: Dict[str, int] = field(default_factory=dict)


@dataclass
class JobPlan:
    request: ScriptArgs
    ad: AnimateDiffJob
    settings: I4VGenSettings  # as resolved for the first batch (validated before sampling)
    chunk_size: int
    chunks: int
    default_preset: str
    models_dir: Optional[str]
    keep_ranker: bool
    outcomes: List[BatchOutcome] = field(default_factory=list)
    progress_log: List[tuple] = field(default_factory=list)


def option(name: str, default: Any) -> Any:
    try:
        return shim.opts().data.get(name, default)
    except shim.HostUnavailable:
        return default


def chunk_size_for(ad: AnimateDiffJob, candidates: int) -> int:
    """Anchor images per sampling run: AnimateDiff's context size, so an image batch never holds more latents
    than one video UNet call already does (cond + uncond)."""
    return max(1, min(candidates, ad.context_size))


def resolve_settings(p: Any, request: ScriptArgs, default_preset: str, iteration_seed: int) -> I4VGenSettings:
    prompts = p.prompts if getattr(p, "prompts", None) else p.all_prompts
    negatives = p.negative_prompts if getattr(p, "negative_prompts", None) else p.all_negative_prompts
    return build_settings(
        request, prompt=str(prompts[0]), negative_prompt=str(negatives[0]), seed=iteration_seed,
        frames=int(p.batch_size), steps=int(p.steps), guidance=float(p.cfg_scale), default_preset=default_preset,
    )

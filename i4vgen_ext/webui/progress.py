"""One WebUI progress bar across I4VGen's stages: each stage of a batch counts as one A1111 job.

Details: docs/webui-host.md §Progress.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..core.compose import STAGE_LABELS
from ..core.denoiser import StepEvent


def jobs_per_batch(anchor_chunks: int, *, mode: str = "i4vgen", anchor_image: bool = False) -> int:
    """Progress jobs of one batch: anchor chunks + ranking (unless an anchor image replaces them), NI-VSDS and
    regeneration for I4VGen; AnimateDiff's own video for "evs"; one more for EVS refinement."""
    if mode == "evs":
        return 2
    jobs = 2 if anchor_image else anchor_chunks + 3
    return jobs + 1 if mode.endswith("evs") else jobs


def plan_job_count(state: Any, n_iter: int, jobs: int, *, hires: bool = False) -> None:
    """Call from ``Script.process`` (before ``process_images_inner`` fills in ``job_count = n_iter``) with
    ``jobs_per_batch(...)``. Hires. fix adds one job per batch; txt2img's ``init`` would double the count instead,
    so it is told the count is already refined."""
    jobs += 1 if hires else 0
    extra = n_iter * (jobs - 1)
    if state.job_count == -1:
        state.job_count = n_iter + extra
    else:  # an outer script (XYZ grid, ...) already counted this job once
        state.job_count += extra
    if hires:
        state.processing_has_refined_job_count = True


@dataclass
class StageProgress:
    """Feeds ``shared.state`` from the core's ``StepEvent`` callbacks and from the host samplers' steps."""

    state: Any
    tqdm: Any = None
    anchor_chunks: int = 1
    log: List[Tuple[str, int, int, int]] = field(default_factory=list)  # (stage, i, total, job_no)
    current: str = "the start"  # what the batch is doing, for an interrupt's message
    _saved_text: Optional[str] = None
    _anchor_chunk: int = 0
    _evs_total: int = 0
    _evs_done: int = 0

    def begin(self) -> None:
        self._saved_text = self.state.textinfo

    def end(self) -> None:
        self.state.textinfo = self._saved_text

    def stage(self, stage: str, detail: str = "") -> None:
        self.current = STAGE_LABELS.get(stage, stage)
        text = f"I4VGen: {self.current}"
        self.state.textinfo = f"{text} ({detail})" if detail else text

    def anchor_chunk_started(self, index: int, count: int) -> None:
        self._anchor_chunk = index
        self.stage("anchors", f"batch {index + 1}/{count}" if count > 1 else "")

    def anchor_chunk_finished(self) -> None:
        self.state.nextjob()

    def on_anchor_chunk(self, index: int, count: int, finished: bool) -> None:
        """``HostDenoiser``'s hook around each anchor chunk."""
        if finished:
            self.anchor_chunk_finished()
        else:
            self.anchor_chunk_started(index, count)

    def stage_finished(self) -> None:
        """A video stage that EVS follows is done (the host's own ``nextjob`` then counts EVS)."""
        self.state.nextjob()

    def evs_started(self, total: int) -> None:
        """EVS reports ``total`` steps (image steps, video steps, inversion steps) on one bar."""
        self._evs_total, self._evs_done = total, 0
        self.state.sampling_steps, self.state.sampling_step = total, 0

    def __call__(self, event: StepEvent) -> None:
        """The core's callback. Host samplers already set ``sampling_step``/``sampling_steps`` for anchors and
        regeneration; ranking, NI-VSDS and EVS run outside a host sampler, so they are counted here."""
        self.log.append((event.stage, event.i, event.total, self.state.job_no))
        if event.stage in ("ranking", "ni-vsds"):
            if event.i == 1 or self.state.sampling_steps != event.total:
                self.stage(event.stage)
            self.state.sampling_steps = event.total
            self.state.sampling_step = event.i
            if self.tqdm is not None:
                self.tqdm.update()
            if event.i == event.total:
                self.state.nextjob()
        elif event.stage == "regeneration" and event.i == 1:
            self.stage("regeneration")
        elif event.stage.startswith("evs"):  # the denoiser sets the text as it switches between EVS stages
            self._evs_done += 1
            self.state.sampling_steps = max(self._evs_total, self._evs_done)
            self.state.sampling_step = self._evs_done
            if self.tqdm is not None:
                self.tqdm.update()

"""One WebUI progress bar across I4VGen's stages.

A1111's bar is ``job_no / job_count + (sampling_step / sampling_steps) / job_count`` (``modules/progress.py``
``progressapi``), its text is ``state.textinfo``, and ``process_images_inner`` calls ``state.nextjob()`` once per
batch after ``p.sample``. Each batch therefore counts as ``anchor chunks + 3`` jobs: every anchor chunk (one host
sampling run each), ranking, NI-VSDS, and regeneration, whose ``nextjob`` is the host's own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..denoiser import StepEvent

STAGE_LABELS = {"anchors": "anchor images", "ranking": "ranking candidates", "ni-vsds": "NI-VSDS",
                "regeneration": "regeneration"}


def jobs_per_batch(anchor_chunks: int) -> int:
    return anchor_chunks + 3


def plan_job_count(state: Any, n_iter: int, anchor_chunks: int) -> None:
    """Call from ``Script.process`` (before ``process_images_inner`` fills in ``job_count = n_iter``)."""
    extra = n_iter * (jobs_per_batch(anchor_chunks) - 1)
    if state.job_count == -1:
        state.job_count = n_iter + extra
    else:  # an outer script (XYZ grid, ...) already counted this job once
        state.job_count += extra


@dataclass
class StageProgress:
    """Feeds ``shared.state`` from the core's ``StepEvent`` callbacks and from the host samplers' steps."""

    state: Any
    tqdm: Any = None
    anchor_chunks: int = 1
    log: List[Tuple[str, int, int, int]] = field(default_factory=list)  # (stage, i, total, job_no)
    _saved_text: Optional[str] = None
    _anchor_chunk: int = 0

    def begin(self) -> None:
        self._saved_text = self.state.textinfo

    def end(self) -> None:
        self.state.textinfo = self._saved_text

    def stage(self, stage: str, detail: str = "") -> None:
        text = f"I4VGen: {STAGE_LABELS.get(stage, stage)}"
        self.state.textinfo = f"{text} ({detail})" if detail else text

    def anchor_chunk_started(self, index: int, count: int) -> None:
        self._anchor_chunk = index
        self.stage("anchors", f"batch {index + 1}/{count}" if count > 1 else "")

    def anchor_chunk_finished(self) -> None:
        self.state.nextjob()

    def __call__(self, event: StepEvent) -> None:
        """The core's callback. Host samplers already set ``sampling_step``/``sampling_steps`` for anchors and
        regeneration; ranking and NI-VSDS run outside a host sampler, so they are counted here."""
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

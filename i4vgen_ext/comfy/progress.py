"""ComfyUI's progress bar over a whole run: one bar of ``sum(plan)`` steps (every stage's steps, known before the
first UNet call), moved by the core's step events; the stage of each step is kept for the report."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from ..core.denoiser import StepEvent
from . import shim


class RunProgress:
    def __init__(self, plan: Mapping[str, int], bar: Any = None):
        self.total = int(sum(plan.values()))
        self.bar = bar if bar is not None else shim.progress_bar(self.total)
        self.done = 0
        self.stages: List[str] = []
        self.per_stage: Dict[str, int] = {}

    def __call__(self, event: StepEvent) -> None:
        self.done += 1
        if not self.stages or self.stages[-1] != event.stage:
            self.stages.append(event.stage)
        self.per_stage[event.stage] = self.per_stage.get(event.stage, 0) + 1
        self.bar.update_absolute(min(self.done, self.total), self.total)

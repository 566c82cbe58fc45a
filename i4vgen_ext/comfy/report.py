"""The node's report: what ran and what it cost, as JSON text (the REPORT output and the history's ui entry)."""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

from ..core.compose import RunResult
from ..core.settings import I4VGenSettings


def build_report(result: RunResult, settings: I4VGenSettings, *, call_plan: Mapping[str, int],
                 sessions: Mapping[str, int], context_length: Optional[int], seconds: float) -> Dict[str, Any]:
    return {
        "mode": result.mode,
        "anchor_index": result.anchor_index,
        "ranker": result.ranker,
        "scores": result.scores,
        "unet_calls": dict(result.unet_calls),
        "call_plan": dict(call_plan),
        "sampling_sessions": dict(sessions),
        "timesteps": {k: list(v) for k, v in result.timesteps.items()},
        "progress_steps": dict(result.reported),
        "frames": settings.frames,
        "width": settings.width,
        "height": settings.height,
        "seed": settings.seed,
        "steps": settings.steps,
        "cfg": settings.guidance,
        "context_length": context_length,
        "settings": method_settings(settings),
        "seconds": round(seconds, 3),
    }


def method_settings(settings: I4VGenSettings) -> Dict[str, Any]:
    """The method's settings as run (the ranker is the loader node's: see ``ranker``)."""
    values = {k: v for k, v in settings.method_dict().items() if not k.startswith("ranker")}
    if settings.runs_evs:
        values["evs"] = settings.evs().to_dict()
    return values


def report_text(report: Mapping[str, Any]) -> str:
    return json.dumps(report, sort_keys=True)

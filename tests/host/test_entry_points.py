"""The WebUI job runs the one composition: in every mode its infotext's UNet calls and the steps it reports are
what ``core.compose`` plans, as for the CLI and the benchmark (``tests/standalone/test_entry_points.py``)."""
from __future__ import annotations

import json

import pytest

from i4vgen_ext.core.compose import call_plan, plan_run
from i4vgen_ext.webui import batch as i4vgen_batch
from i4vgen_ext.webui.fields import WEBUI_MODES

from .conftest import ad_args, gradient, make_p, run, ui_args

STEPS = 5


@pytest.mark.parametrize("mode, anchor, candidates", [("i4vgen", False, 2), ("i4vgen", False, 11), ("i4vgen", True, 2),
                                                      ("i4vgen+evs", False, 2), ("evs", False, 2)])
def test_webui_job_makes_the_planned_calls_and_reports_the_planned_steps(host, stub, monkeypatch, mode, anchor,
                                                                         candidates):
    runs = []
    original = i4vgen_batch.run_mode

    def spy(denoiser, settings, noises, **kwargs):
        result = original(denoiser, settings, noises, **kwargs)
        runs.append((settings, kwargs, result))
        return result

    monkeypatch.setattr(i4vgen_batch, "run_mode", spy)
    named = dict(mode=mode, candidates=candidates, evs_inversion=mode.endswith("evs"),
                 anchor_image=gradient(64, 64) if anchor else None)
    p = make_p(host, i4vgen=ui_args(host, **named), ad=ad_args(batch_size=8), steps=STEPS)
    run(p)
    (settings, kwargs, result), = runs
    passes = -(-candidates // 8) if not anchor else 1  # candidates are sampled in chunks of the context size
    assert kwargs["anchor_passes"] == passes
    core_mode = WEBUI_MODES[mode]
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["unet_calls"] == call_plan(core_mode, settings, anchor_given=anchor, anchor_passes=passes)
    planned = plan_run(core_mode, settings, anchor_given=anchor, anchor_passes=passes)
    assert result.plan == planned and result.reported == planned

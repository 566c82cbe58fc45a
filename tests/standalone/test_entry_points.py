"""Each mode through each standalone entry point (CLI, benchmark) on the tiny model: both run the one composition,
so their UNet calls and progress totals are the ones ``core.compose`` plans (the WebUI job is checked against the
same plans in ``tests/host/test_entry_points.py``)."""
from __future__ import annotations

import json

import pytest

from i4vgen_ext.core.compose import call_plan, plan_run
from i4vgen_ext.core.settings import I4VGenSettings
from i4vgen_ext.standalone.cli import main

FRAMES, CANDIDATES, STEPS = 2, 2, 6
MODES = [("i4vgen", False), ("i4vgen", True), ("plain", False), ("i4vgen+evs", False), ("plain+evs", False)]


@pytest.fixture(autouse=True)
def _demo_cache(demo_model_dir, monkeypatch):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))


def settings_for(mode: str) -> I4VGenSettings:
    return I4VGenSettings.from_preset("official", prompt="a cat", seed=3, frames=FRAMES, candidates=CANDIDATES,
                                      steps=STEPS, ranker="none", mode=mode, evs_inversion=mode.endswith("evs"))


def run_cli(tmp_path, mode: str, anchor: bool) -> dict:
    from PIL import Image

    out = tmp_path / f"{mode}-{anchor}"
    extra = []
    if anchor:
        Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "anchor.png")
        extra = ["--anchor-image", str(tmp_path / "anchor.png")]
    if mode.endswith("evs"):
        extra.append("--evs-inversion")
    code = main(["generate", "--prompt", "a cat", "--out", str(out), "--quiet", "--seed", "3", "--mode", mode,
                 "--frames", str(FRAMES), "--candidates", str(CANDIDATES), "--steps", str(STEPS), "--ranker", "none",
                 *extra])
    assert code == 0
    return json.loads((out / "run.json").read_text())


def run_bench_method(demo_backbone, mode: str) -> dict:
    from bench.methods import BenchSetup, run_i4vgen_preset, run_plain, run_with_evs

    setup = BenchSetup(demo_backbone, "a cat", FRAMES, STEPS, CANDIDATES, 64, 64, seed=3)
    if mode == "plain":
        return run_plain(setup).unet_calls
    if mode == "i4vgen":
        return run_i4vgen_preset(setup, "official").unet_calls
    return run_with_evs(setup, mode.split("+")[0]).unet_calls


@pytest.mark.parametrize("mode, anchor", MODES)
def test_cli_runs_the_planned_calls_and_steps(tmp_path, mode, anchor):
    run = run_cli(tmp_path, mode, anchor)
    settings = settings_for(mode)
    assert run["unet_calls"] == call_plan(mode, settings, anchor_given=anchor)
    planned = plan_run(mode, settings, anchor_given=anchor)
    assert run["progress_steps"] == planned
    assert run["progress_reported"] == planned  # every step the bar counts was reported, none more


@pytest.mark.parametrize("mode", ["i4vgen", "plain", "i4vgen+evs", "plain+evs"])
def test_benchmark_and_cli_agree(tmp_path, demo_backbone, mode):
    import torch

    threads = torch.get_num_threads()
    try:
        bench_calls = run_bench_method(demo_backbone, mode)
    finally:
        torch.set_num_threads(threads)
    settings = settings_for(mode).replace(evs_inversion=False)  # the benchmark's EVS rows use the defaults
    assert bench_calls == call_plan(mode, settings)
    cli = run_cli(tmp_path, mode, False)["unet_calls"]
    assert cli["total"] == call_plan(mode, settings_for(mode))["total"]

"""The node pack on a running ComfyUI + AnimateDiff-Evolved (``I4VGEN_COMFY_URL``): the video and the report,
determinism, a plain ADE job unchanged afterwards, context options, the anchor image, cancel, bad inputs, and the
cost of an I4VGen job against a plain ADE job with its UNet-call floor. Tests run in file order and share jobs."""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Dict

import numpy as np
import pytest

from i4vgen_ext.comfy.inputs import build_settings
from i4vgen_ext.core.compose import call_plan
from i4vgen_ext.core.settings import FIELD_BY_NAME

from .client import Comfy, Job
from .conftest import CANDIDATE_SAVE, CANDIDATES, FRAME_SAVE, FRAMES, SAMPLER, SIZE, STEPS, i4vgen_workflow, plain_workflow

JOBS: Dict[str, Job] = {}
SETTINGS = build_settings({"seed": 1234, "steps": STEPS, "candidates": CANDIDATES}, frames=FRAMES)
PLAN = call_plan("i4vgen", SETTINGS)
K, N_RE = SETTINGS.nivsds_iterations, SETTINGS.regen_steps


def finished(job: Job) -> Job:
    assert job.status == "success", json.dumps(job.error or job.refusal or job.messages)[:2000]
    return job


def frames_of(comfy: Comfy, job: Job, node: str = FRAME_SAVE) -> np.ndarray:
    return comfy.frames(job, node)


def test_the_nodes_are_offered_with_the_tables_settings(comfy):
    info = comfy.object_info["I4VGenSamplerAnimateDiff"]
    assert info["category"] == "I4VGen" and info["display_name"] == "I4VGen Sampler (AnimateDiff)"
    assert info["output"] == ["LATENT", "IMAGE", "STRING"]
    required = info["input"]["required"]
    for widget, setting in (("candidates", "candidates"), ("nivsds_fraction", "nivsds_fraction"),
                            ("regen_strength", "regen_strength"), ("steps", "steps"), ("cfg", "guidance")):
        spec = FIELD_BY_NAME[setting]
        assert required[widget][1]["default"] == spec.default and required[widget][1]["min"] == spec.minimum
    assert required["preset"][0] == list(FIELD_BY_NAME["preset"].choices)
    assert set(info["input"]["optional"]) == {"vae", "ranker", "anchor_image"}
    loader = comfy.object_info["I4VGenRankerLoader"]["input"]["required"]
    assert loader["ranker"][0] == ["imagereward", "clip", "pickscore", "none"]


def test_a_plain_ade_job_before(comfy):
    JOBS["plain"] = finished(comfy.run(plain_workflow()))
    assert frames_of(comfy, JOBS["plain"], "32").shape == (FRAMES, SIZE, SIZE, 3)


def test_the_video_and_the_report(comfy, measured):
    job = JOBS["i4vgen"] = finished(comfy.run(i4vgen_workflow()))
    report = job.report(SAMPLER)
    assert report["unet_calls"] == PLAN == report["call_plan"]
    assert report["anchor_index"] == 0 and report["ranker"] == "none"
    assert report["timesteps"]["regeneration"] == [751, 501, 251, 1]
    assert report["sampling_sessions"] == {"image": 1, "video": K + 1}
    assert (report["frames"], report["width"], report["height"]) == (FRAMES, SIZE, SIZE)
    frames = frames_of(comfy, job)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.std() > 1.0
    assert frames_of(comfy, job, CANDIDATE_SAVE).shape == (CANDIDATES, SIZE, SIZE, 3)
    assert job.outputs["9"]["images"], "the stock video-save node wrote no animation"
    measured["i4vgen_report"] = {k: report[k] for k in ("unet_calls", "sampling_sessions", "seconds")}


def test_the_same_seed_gives_the_same_video(comfy):
    again = finished(comfy.run(i4vgen_workflow(prompt_note=" ", prefix="i4vgen_again")))
    assert again.report(SAMPLER)["seconds"] != JOBS["i4vgen"].report(SAMPLER)["seconds"], "the sampler was cached"
    assert np.array_equal(frames_of(comfy, again), frames_of(comfy, JOBS["i4vgen"]))


def test_an_anchor_image_skips_candidates_and_ranking(comfy):
    job = finished(comfy.run(i4vgen_workflow(anchor_color=0xC04020, prefix="i4vgen_anchor")))
    report = job.report(SAMPLER)
    assert report["anchor_index"] == -1 and report["unet_calls"]["anchor"] == 0
    assert report["sampling_sessions"]["image"] == 0
    assert frames_of(comfy, job).shape == (FRAMES, SIZE, SIZE, 3)
    shown = frames_of(comfy, job, CANDIDATE_SAVE)  # the anchor image as fitted to the video
    assert shown.shape == (1, SIZE, SIZE, 3) and abs(int(shown[..., 0].mean()) - 0xC0) <= 2


def test_context_options_apply(comfy, measured):
    job = finished(comfy.run(i4vgen_workflow(context=(4, 2), prefix="i4vgen_context")))
    report = job.report(SAMPLER)
    assert report["context_length"] == 4 and report["unet_calls"] == PLAN
    frames = frames_of(comfy, job)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert not np.array_equal(frames, frames_of(comfy, JOBS["i4vgen"]))
    measured["context_job_seconds"] = round(job.seconds, 2)


@pytest.mark.parametrize("case, expected", [
    ("latent", "latent"), ("freeinit", "FreeInit iterations"), ("no_motion", "video_model"),
])
def test_bad_inputs_are_refused_before_sampling(comfy, case, expected):
    workflow = {"latent": lambda: i4vgen_workflow(frames=129, prefix="bad"),
                "freeinit": lambda: i4vgen_workflow(iterations=2, prefix="bad"),
                "no_motion": lambda: i4vgen_workflow(video_model="checkpoint", prefix="bad")}[case]()
    started = time.monotonic()
    job = comfy.run(workflow)
    assert job.status == "error" and job.error is not None, job.messages
    assert job.error["node_id"] == SAMPLER and job.error["exception_message"].startswith(expected)
    assert time.monotonic() - started < 60, "the refusal came after sampling had started"


def test_a_bad_setting_gets_comfyuis_validation_error(comfy):
    job = comfy.run(i4vgen_workflow(anchor_index=5))
    assert job.status == "refused"
    errors = job.refusal["node_errors"][SAMPLER]["errors"]
    assert any("anchor_index = 5 is not allowed" in (e.get("details", "") + e.get("message", "")) for e in errors)


def test_cancel_stops_the_job_and_a_plain_job_afterwards_is_unchanged(comfy):
    status, body = comfy.submit(i4vgen_workflow(seed=4321, prefix="i4vgen_cancel"))
    assert status == 200
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 120
    while prompt_id not in comfy.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(5.0)  # inside the candidates' or NI-VSDS's sampling
    started = time.monotonic()
    comfy.interrupt()
    job = comfy.job(prompt_id)
    assert job.interrupted and not job.outputs.get(FRAME_SAVE)
    assert time.monotonic() - started < 60, "Cancel did not stop the job at once"
    after = JOBS["plain_after"] = finished(comfy.run(plain_workflow(advanced=True, prefix="plain_after")))
    assert np.array_equal(frames_of(comfy, after, "32"), frames_of(comfy, JOBS["plain"], "32"))


def test_cost_against_a_plain_ade_job(comfy, measured):
    """On the warm server: a plain ADE job at S steps, the I4VGen job, a plain ADE job at 2S steps and an image-mode
    job of N pictures at S steps (a new seed each, so nothing is cached). A job's time is the server's CPU seconds
    when it runs here (env I4VGEN_COMFY_PID, one round), else its execution time, the quicker of two rounds. t(2S) - t(S) prices S
    video calls, the rest of t(S) is a plain job's fixed cost, the image job less that prices S image calls over
    the candidates. I4VGen's floor is (S c_image + (K + n_re) c_video + fixed) / t_plain."""
    runs = {"plain": [], "i4vgen": [], "plain_2s": [], "image": []}
    calls = None
    cpu = server_cpu_clock()

    def timed(workflow) -> Job:
        before = cpu() if cpu else None
        job = finished(comfy.run(workflow))
        if cpu:
            job.seconds = cpu() - before
        return job

    for offset in (0, 10)[:1 if cpu else 2]:
        runs["plain"].append(timed(plain_workflow(seed=21 + offset, prefix="cost_plain")).seconds)
        job = timed(i4vgen_workflow(seed=22 + offset, prefix="cost_i4vgen"))
        calls = job.report(SAMPLER)["unet_calls"]
        runs["i4vgen"].append(job.seconds)
        runs["plain_2s"].append(timed(plain_workflow(seed=23 + offset, steps=2 * STEPS, prefix="cost_plain_2s")).seconds)
        runs["image"].append(timed(plain_workflow(seed=24 + offset, video=False, batch=CANDIDATES,
                                                  prefix="cost_image")).seconds)
    t = {name: min(values) for name, values in runs.items()}
    t_plain, t_i4vgen = t["plain"], t["i4vgen"]
    c_video = (t["plain_2s"] - t_plain) / STEPS
    fixed = t_plain - STEPS * c_video
    c_image = max(t["image"] - fixed, 0.0) / STEPS
    floor = (STEPS * c_image + (K + N_RE) * c_video + fixed) / t_plain
    ratio = t_i4vgen / t_plain
    table = {
        "host": host_name(comfy),
        "machine": f"{platform.platform()}, {os.cpu_count()} logical cores; ComfyUI on the CPU (--cpu)",
        "command": "I4VGEN_COMFY_URL=... I4VGEN_COMFY_COST_JSON=bench/results/comfy/<name>.json make test-comfy "
                   "(tests/comfy_api/test_comfy_live.py::test_cost_against_a_plain_ade_job), then python -m bench.report",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"steps": STEPS, "frames": FRAMES, "candidates": CANDIDATES, "size": f"{SIZE}x{SIZE}",
                     "sampler": "the core's DDIM (I4VGen); euler (plain ADE)", "nivsds_iterations": K,
                     "regeneration_steps": N_RE},
        "seconds_per_job": {name: round(value, 2) for name, value in t.items()},
        "runs_s": {name: [round(v, 2) for v in values] for name, values in runs.items()},
        "unet_calls": {"plain": STEPS, "i4vgen": calls},
        "call_price_s": {"video": round(c_video, 3), "image_over_candidates": round(c_image, 3),
                         "r": round(c_image / c_video, 3) if c_video > 0 else None, "fixed_per_plain_job": round(fixed, 2)},
        "ratio": {"plain": 1.0, "i4vgen": round(ratio, 3)},
        "floor": {"plain": 1.0, "i4vgen": round(floor, 3)},
        "ratio_over_floor": {"plain": 1.0, "i4vgen": round(ratio / floor, 3)},
        "method": ("the server process's CPU seconds per job (/proc/<I4VGEN_COMFY_PID>/stat, user + system), one run "
                   "each" if cpu else "server execution time per job (history timestamps, execution_start to end), "
                   "the quicker of two interleaved runs per job") + " on a warm server; video call price = (t(2S) - "
                  "t(S)) / S of plain ADE jobs; image call price = (t(image job) - fixed) / S",
    }
    measured["cost"] = table
    path = os.environ.get("I4VGEN_COMFY_COST_JSON")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as handle:
            json.dump(table, handle, indent=2)
    # The cost target (within 5% of the call floor) is judged in the benchmark's table (bench/report.py), not here:
    # this test measures; it fails only on a measurement that cannot be priced or calls that break the plan.
    assert c_video > 0 and c_image >= 0 and calls == PLAN, table
    assert table["ratio"]["i4vgen"] > 1.0, f"an I4VGen job cannot cost less than a plain one: {table}"


def server_cpu_clock():
    """The server's CPU seconds so far, read from /proc when it runs on this machine (env I4VGEN_COMFY_PID): on a
    shared machine its wall time swings several-fold with other people's load, its CPU time far less."""
    pid = os.environ.get("I4VGEN_COMFY_PID")
    if not pid or not os.path.exists(f"/proc/{pid}/stat"):
        return None
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)

    return read


def host_name(comfy: Comfy) -> str:
    _, stats = comfy.get("/system_stats")
    version = (stats or {}).get("system", {}).get("comfyui_version", "?")
    return f"ComfyUI {version} with ComfyUI-AnimateDiff-Evolved and i4vgen"

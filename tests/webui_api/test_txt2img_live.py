"""I4VGen in a live WebUI over /sdapi/v1/txt2img: video and record, samplers, candidates, PNG Info paste-back, refusals,
interrupt, prompt travel, hires fix, batch count, LoRA and memory, the host put back after every kind of
job, and the cost model. Tests run top to bottom; expensive jobs are module fixtures shared between tests."""
from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest

from .client import (
    PNG_MAGIC,
    StepClock,
    WebUI,
    gif_frames,
    gif_sizes,
    i4vgen_record,
    infotext_params,
    parse_record,
    png_image,
    same_pixels,
)
from .conftest import CANDIDATES, FRAMES, PROMPT, SIZE, STEPS, assert_video, motion_module_files

TXT2IMG = "/sdapi/v1/txt2img"
K = int(STEPS * 0.6) + 1  # NI-VSDS iterations, official preset (nivsds_fraction 0.6)
N_RE = STEPS  # regeneration steps (regen_strength 1)
# The candidates fit in one image-mode sampling run (AnimateDiff's context size 8 >= 2), so S anchor calls.
I4VGEN_CALLS = {"anchor": STEPS, "nivsds": K, "regeneration": N_RE, "total": STEPS + K + N_RE}
MOTION_LORA = "mm_sd15_v2_lora_random"  # build_models.py: a LoRA on the v2 module's temporal attention
I4VGEN_STAGES = ("anchor images", "ranking candidates", "NI-VSDS", "regeneration")


def pixels(job) -> list:
    """The video's frames as raw RGB bytes (GIF bytes also hold the infotext, so compare pictures with this)."""
    return [frame.tobytes() for frame in gif_frames(job.gifs[0])]


def candidates_of(job) -> list:
    """(base64, image) of each candidate PNG, in answer order: the PNGs whose I4VGen record names a candidate."""
    found = []
    for item, data in zip(job.body["images"], job.images):
        if data[:8] == PNG_MAGIC:
            image = png_image(data)
            record = i4vgen_record(image.info.get("parameters", ""))
            if record is not None and "candidate" in record:
                found.append((item, image))
    return found


def error_message(job) -> str:
    """A1111's error body for an exception in a job: {"error": class, "detail", "body", "errors": message}."""
    body = job.body if isinstance(job.body, dict) else {}
    return str(body.get("errors") or body.get("detail") or job.text())


def ram_used(webui: WebUI) -> int:
    status, memory = webui.get("/sdapi/v1/memory")
    assert status == 200 and "used" in memory["ram"], memory
    return int(memory["ram"]["used"])  # psutil: the server process's current RSS in bytes (not a peak)


# The plain reference and the I4VGen job everything else is compared with -------------------------------------------
@pytest.fixture(scope="module")
def i4vgen_job(webui, payload, plain_reference):
    """I4VGen with 2 candidates, ranker none, candidates returned; AnimateDiff also returns its frames."""
    body = payload.txt2img(i4vgen={"return_candidates": True}, animatediff={"format": ["GIF", "Frame"]})
    return webui.job(TXT2IMG, body)


def test_plain_job_carries_no_i4vgen_record(plain_reference):
    assert plain_reference.record is None
    assert "I4VGen" not in plain_reference.info["infotexts"][0]
    assert len(plain_reference.images) == 1


def test_i4vgen_makes_a_video_with_its_record(i4vgen_job, plain_reference):
    assert_video(i4vgen_job)
    record = i4vgen_job.record
    assert record is not None, i4vgen_job
    assert record["unet_calls"] == I4VGEN_CALLS
    assert (record["chosen_anchor"], record["ranked_by"], record["candidates"]) == (0, "none", CANDIDATES)
    assert pixels(i4vgen_job) != pixels(plain_reference)


def test_candidates_follow_animatediff_outputs(i4vgen_job):
    images = i4vgen_job.images
    assert len(images) == 1 + FRAMES + CANDIDATES  # GIF, AnimateDiff's frames, then the candidates
    assert images[0][:4] == b"GIF8"
    frames = [i4vgen_record(png_image(b).info["parameters"]) for b in images[1:1 + FRAMES]]
    assert all(r is not None and "candidate" not in r for r in frames), "AnimateDiff's frames must come first"
    candidates = [png_image(b) for b in images[1 + FRAMES:]]
    records = [i4vgen_record(c.info["parameters"]) for c in candidates]
    assert [r["candidate"] for r in records] == list(range(CANDIDATES))
    assert [c.size for c in candidates] == [(SIZE, SIZE)] * CANDIDATES
    assert not same_pixels(candidates[0], candidates[1]), "two seeds made the same candidate"


def test_plain_job_unchanged_after_i4vgen_success(webui, payload, plain_reference, i4vgen_job):
    assert i4vgen_job.status == 200
    job = webui.job(TXT2IMG, payload.txt2img())
    assert job.gifs == plain_reference.gifs, "a plain AnimateDiff job changed after an I4VGen job"


# Samplers and schedulers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_name, sampler, scheduler", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),  # A1111 1.10 splits the legacy name into sampler + schedule type
    ("DDIM", "DDIM", None),
    ("UniPC", "UniPC", None),
])
def test_sampler(webui, payload, i4vgen_job, sampler_name, sampler, scheduler):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, sampler_name=sampler_name))
    assert_video(job)
    assert len(job.images) == 1, "candidates came back without return_candidates"
    params = infotext_params(job.info["infotexts"][0])
    assert params["Sampler"] == sampler
    if scheduler:
        assert params["Schedule type"] == scheduler
    calls = job.record["unet_calls"]
    assert calls["nivsds"] == K and calls["anchor"] > 0 and calls["regeneration"] > 0, calls
    assert calls["total"] == calls["anchor"] + calls["nivsds"] + calls["regeneration"], calls
    assert pixels(job) != pixels(i4vgen_job), f"{sampler_name} made Euler a's video"


def installed_motion_module(webui, kind: str) -> str:
    """The installed motion module whose file name holds ``kind`` (build_models.py writes one of each)."""
    found = [f for f in motion_module_files(webui) if kind in f.lower()]
    if not found:
        pytest.skip(f"no motion module file name contains {kind!r} (tests/webui_api/build_models.py writes them)")
    return found[0]


@pytest.mark.parametrize("kind, extra_prompt", [
    ("v15.", ""),  # v1: mm_sd_v15.safetensors (no mid block, 24 positions)
    ("v3_", " <lora:random-lora:1>"),  # v3, with a LoRA in the place of its adapter LoRA
    ("animatelcm", ""),  # AnimateLCM's module with a usual sampler
])
def test_motion_module_versions(webui, payload, i4vgen_job, kind, extra_prompt):
    name = installed_motion_module(webui, kind)
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, prompt=PROMPT + extra_prompt, animatediff={"model": name}))
    assert_video(job)
    assert job.record["unet_calls"] == I4VGEN_CALLS, job.record
    assert job.info["extra_generation_params"]["AnimateDiff"].startswith(f"model: {name}"), job.info
    assert pixels(job) != pixels(i4vgen_job), f"{name} made the v2 module's video"


def test_motion_lora_changes_the_video_and_not_the_candidates(webui, payload, i4vgen_job):
    webui.post("/sdapi/v1/refresh-loras", {})
    status, loras = webui.get("/sdapi/v1/loras")
    if status != 200 or not any(item.get("name") == MOTION_LORA for item in loras):
        pytest.skip(f"models/Lora/{MOTION_LORA}.safetensors is not installed (tests/webui_api/build_models.py)")
    job = webui.job(TXT2IMG, payload.txt2img(prompt=f"{PROMPT} <lora:{MOTION_LORA}:1>", i4vgen={"return_candidates": True},
                                             animatediff={"format": ["GIF", "Frame"]}))
    assert_video(job)
    assert job.record["unet_calls"] == I4VGEN_CALLS, job.record
    assert pixels(job) != pixels(i4vgen_job), "the motion LoRA did not reach the video"
    ours, theirs = candidates_of(job), candidates_of(i4vgen_job)
    assert len(ours) == len(theirs) == CANDIDATES
    for (_, a), (_, b) in zip(ours, theirs):  # the motion module is out while the candidates are made
        assert same_pixels(a, b), "a motion LoRA changed a candidate image"


def test_sdxl_motion_module_is_refused_by_name(webui, payload, plain_reference):
    name = installed_motion_module(webui, "hotshot")
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, animatediff={"model": name}))
    assert job.status >= 400, job
    message = error_message(job)
    assert "I4VGen" in message and "motion module" in message and "SD1.5" in message, job


def test_lcm_sampler_is_refused_by_name(webui, payload, plain_reference):
    name = os.environ.get("I4VGEN_WEBUI_LCM_MOTION_MODULE") or installed_motion_module(webui, "lcm")
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, sampler_name="LCM", cfg_scale=1.5,
                                             animatediff={"model": name}))
    assert job.status >= 400, job
    message = error_message(job)
    assert "LCM sampler" in message and "I4VGen" in message, job


# PNG Info and paste-back ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(CANDIDATES))
def test_candidate_png_info_names_that_candidate(webui, i4vgen_job, index):
    encoded, _ = candidates_of(i4vgen_job)[index]
    status, info = webui.post("/sdapi/v1/png-info", {"image": encoded})
    assert status == 200, info
    record = parse_record(info["parameters"]["I4VGen"])
    assert (record["anchor_index"], record["candidate"]) == (index, index), record


def test_infotext_paste_reproduces_the_anchor_choice(webui, payload, i4vgen_job):
    index = 1  # the job itself chose candidate 0 (ranker none): pasting candidate 1 must change the choice
    encoded, _ = candidates_of(i4vgen_job)[index]
    status, info = webui.post("/sdapi/v1/png-info", {"image": encoded})
    assert status == 200, info
    # Prompt, seed, steps, sampler, size and the I4VGen settings all come from the infotext; AnimateDiff's dict is
    # given again because its infotext does not hold the output format.
    job = webui.job(TXT2IMG, {"infotext": info["info"], "save_images": False,
                              "alwayson_scripts": {"AnimateDiff": {"args": [payload.animatediff_args()]}}})
    assert_video(job)
    record = job.record
    assert record is not None, job
    assert (record["chosen_anchor"], record["ranked_by"]) == (index, "manual"), record
    ours, theirs = candidates_of(job), candidates_of(i4vgen_job)
    assert len(ours) == CANDIDATES, "the pasted record asked for the candidates back"
    for (_, a), (_, b) in zip(ours, theirs):  # same prompt and seed: the same candidates
        assert same_pixels(a, b), "the pasted job made other candidates (prompt or seed not pasted)"
    assert pixels(job) != pixels(i4vgen_job), "candidate 1 as the anchor made candidate 0's video"


# Refusals -------------------------------------------------------------------------------------------------------------
BAD_ARGS = {
    "args": {"args": "enable"},  # A1111 copies a string into the script's slots character by character
    "nivsds_fraction": {"args": [{"enable": True, "candidates": CANDIDATES, "ranker": "none", "nivsds_fraction": 1.5}]},
    "ranker_path": {"args": [{"enable": True, "candidates": CANDIDATES, "ranker": "none", "ranker_path": "/etc"}]},
}


@pytest.fixture(scope="module")
def refusals(webui, payload, plain_reference):
    return {setting: webui.job(TXT2IMG, payload.txt2img(alwayson={"I4VGen": entry}))
            for setting, entry in BAD_ARGS.items()}


@pytest.mark.parametrize("setting", list(BAD_ARGS))
def test_bad_args_are_refused_by_name(refusals, setting):
    job = refusals[setting]
    assert job.status >= 400, job
    message = error_message(job)
    assert "I4VGen" in message and re.search(rf"\b{setting}\b", message), job


def test_plain_job_unchanged_after_refusals(webui, payload, plain_reference, refusals):
    job = webui.job(TXT2IMG, payload.txt2img())
    assert job.gifs == plain_reference.gifs, "a plain AnimateDiff job changed after I4VGen refused a job"


def test_freeinit_with_i4vgen_is_refused_by_name(webui, payload, plain_reference):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, animatediff={"freeinit_enable": True, "freeinit_iters": 2}))
    assert job.status >= 400, job
    message = error_message(job)
    assert "FreeInit" in message and "I4VGen" in message, job


# Interrupt and skip ---------------------------------------------------------------------------------------------------
STOPS = {"interrupt": "interrupted", "skip": "skipped"}  # the API's verb -> the I4VGen record's key


@pytest.fixture(scope="module", params=list(STOPS))
def stopped(request, webui, payload, plain_reference):
    """An I4VGen job interrupted or skipped (``/sdapi/v1/interrupt`` / ``skip``) from another thread once the
    WebUI's progress text shows NI-VSDS."""
    action = request.param
    watcher, seen, done = WebUI(webui.url, timeout=30), {}, threading.Event()

    def watch():
        deadline = time.monotonic() + 900
        while not done.is_set() and time.monotonic() < deadline:
            status, progress = watcher.get("/sdapi/v1/progress?skip_current_image=true")
            text = (progress or {}).get("textinfo") or "" if status == 200 else ""
            if text.startswith("I4VGen: NI-VSDS"):
                seen["textinfo"] = text
                answer = watcher.post(f"/sdapi/v1/{action}", {})
                assert answer[0] == 200, answer
                return
            done.wait(0.2)  # polling interval: the only wait in this suite

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True))
    finally:
        done.set()
        thread.join(60)
    return action, job, seen


def test_interrupt_or_skip_returns_a_full_video_naming_the_stage(stopped, measured):
    action, job, seen = stopped
    assert seen, f"the progress text never showed I4VGen's NI-VSDS stage; the job: {job}"
    assert_video(job)  # all frames: a still video would come back as a one-frame GIF
    record = job.record
    assert record is not None, job
    measured[action] = {"progress_text_at_stop": seen["textinfo"], "record": record.get(STOPS[action])}
    assert record.get(STOPS[action]) in ("NI-VSDS", "regeneration"), record
    assert "unet_calls" not in record, "a stopped video must not look like a finished one"


def test_plain_job_unchanged_after_interrupt_or_skip(webui, payload, plain_reference, stopped):
    job = webui.job(TXT2IMG, payload.txt2img())
    assert job.gifs == plain_reference.gifs, f"a plain AnimateDiff job changed after a {stopped[0]} of I4VGen"


# AnimateDiff features -------------------------------------------------------------------------------------------------
def test_prompt_travel(webui, payload, i4vgen_job):
    # Frame 0's prompt is "head, a red ball, tail" = PROMPT, the single prompt of i4vgen_job (same seed): only the
    # travel to frame 4's prompt can make the videos differ.
    assert PROMPT == "head, a red ball, tail"
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, prompt="head\n0: a red ball\n4: a blue ball\ntail"))
    assert_video(job)
    assert job.record["unet_calls"] == I4VGEN_CALLS
    assert pixels(job) != pixels(i4vgen_job), "the prompt travel made the single-prompt video"


def test_hires_fix(webui, payload, plain_reference):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                                             hr_second_pass_steps=2, denoising_strength=0.5))
    assert_video(job, size=2 * SIZE)
    record = job.record
    assert record is not None and record.get("unet_calls"), job
    assert record["unet_calls"]["nivsds"] == K, record


def test_batch_count_makes_one_video_per_iteration(webui, payload, plain_reference):
    job = webui.job(TXT2IMG, payload.txt2img(i4vgen=True, n_iter=2))
    assert job.status == 200, job
    assert len(job.images) == len(job.gifs) == 2, "n_iter 2 must give two GIFs"
    for gif in job.gifs:
        assert gif_sizes(gif) == (FRAMES, {(SIZE, SIZE)})
    info = job.info
    seeds = [info["all_seeds"][0], info["all_seeds"][FRAMES]]  # one seed per video, its first frame's
    assert seeds[0] != seeds[1]
    for n, seed in enumerate(seeds):
        text = info["infotexts"][n * FRAMES]
        assert infotext_params(text)["Seed"] == str(seed)
        record = i4vgen_record(text)
        assert record is not None and record["unet_calls"] == I4VGEN_CALLS, text
    first, second = ([f.tobytes() for f in gif_frames(g)] for g in job.gifs)
    assert first != second


# LoRA and memory ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_jobs(webui, payload, plain_reference, measured):
    status, loras = webui.get("/sdapi/v1/loras")
    if status != 200 or not any(item.get("name") == "random-lora" for item in loras):
        pytest.skip("models/Lora/random-lora.safetensors is not installed (tests/webui_api/build_models.py makes it)")
    prompt = PROMPT + " <lora:random-lora:1>"
    plain = webui.job(TXT2IMG, payload.txt2img(prompt=prompt))
    plain_ram = ram_used(webui)
    i4vgen = webui.job(TXT2IMG, payload.txt2img(prompt=prompt, i4vgen=True))
    i4vgen_ram = ram_used(webui)
    measured["memory_ram_used_after_job"] = {
        "what": "/sdapi/v1/memory ram.used = psutil RSS of the server process when asked (current, not peak), bytes",
        "plain+LoRA": plain_ram, "i4vgen+LoRA": i4vgen_ram, "ratio": round(i4vgen_ram / plain_ram, 4)}
    return plain, i4vgen, plain_ram, i4vgen_ram


def test_lora_changes_the_i4vgen_video(lora_jobs, plain_reference, i4vgen_job):
    plain, i4vgen, _, _ = lora_jobs
    assert_video(plain)  # (no "Lora hashes" in the infotext: the suite's server may run with --no-hashing)
    assert pixels(plain) != pixels(plain_reference), "the LoRA has no effect on plain AnimateDiff"
    assert_video(i4vgen)
    assert "<lora:random-lora:1>" in i4vgen.info["prompt"]
    assert i4vgen.record["unet_calls"] == I4VGEN_CALLS
    assert pixels(i4vgen) != pixels(i4vgen_job), "the LoRA did not change the I4VGen video"


def test_memory_of_i4vgen_within_10_percent_of_plain(lora_jobs):
    _, _, plain_ram, i4vgen_ram = lora_jobs
    assert i4vgen_ram <= 1.10 * plain_ram, f"RSS after plain+LoRA {plain_ram} B, after I4VGen+LoRA {i4vgen_ram} B"


# Cost model -----------------------------------------------------------------------------------------------------------
def host_and_machine(webui: WebUI) -> tuple:
    """What the cost table says of the server: A1111's version and extensions, and the machine it runs on."""
    _, info = webui.get("/internal/sysinfo")
    info = info if isinstance(info, dict) else {}
    names = sorted(e.get("name", "?") for e in info.get("Extensions") or [])  # the enabled extensions
    cpu, ram = info.get("CPU") or {}, info.get("RAM") or {}
    _, flags = webui.get("/sdapi/v1/cmd-flags")
    device = "CPU" if isinstance(flags, dict) and flags.get("use_cpu") else "GPU"
    return (f"AUTOMATIC1111 {info.get('Version', '?')} with {', '.join(names) or '?'}",
            f"{info.get('Platform', '?')}, {cpu.get('count logical', '?')} logical cores, RAM {ram.get('total', '?')}; "
            f"the WebUI on the {device}, torch threads per OMP_NUM_THREADS of its start")


def test_cost_model(webui, payload, measured, i4vgen_job):
    """In one server session, back to back on the warm server: plain AnimateDiff, I4VGen and AnimateDiff's FreeInit
    (2 rounds) at S steps, and a plain image job of N pictures (no AnimateDiff: the candidates' image mode). The
    price of one call is the host's own step time (``StepClock``: the median gap between sampling steps, without
    the fixed costs); a plain job's fixed costs are its time less S video calls. I4VGen's floor is its UNet calls at
    those prices plus a plain job's fixed costs, (S c_image + (K + n_re) c_video + fixed) / t_plain; FreeInit's is
    2 S video calls plus the same fixed costs. The I4VGen job also decodes its N candidates, which the floor leaves
    out."""
    bodies = {  # plain twice, first and last, so that its price and time are two samples
        "plain": payload.txt2img(),
        "i4vgen": payload.txt2img(i4vgen=True),
        "freeinit": payload.txt2img(animatediff={"freeinit_enable": True, "freeinit_iters": 2}),
        "image": payload.txt2img(animatediff=False, batch_size=CANDIDATES),
        "plain_again": payload.txt2img(),
    }
    jobs, clocks = {}, {}
    for name, body in bodies.items():
        with StepClock(webui.url) as clocks[name]:
            jobs[name] = webui.job(TXT2IMG, body)
        assert jobs[name].status == 200, (name, jobs[name])
    assert len(jobs["image"].pngs) == CANDIDATES
    assert jobs["plain_again"].gifs == jobs["plain"].gifs
    i4vgen_calls = jobs["i4vgen"].record["unet_calls"]
    assert i4vgen_calls == I4VGEN_CALLS, "the record's UNet calls differ from the cost model"
    step_seconds = {name: clock.seconds_per_step() for name, clock in clocks.items() if name != "plain_again"}
    step_seconds["plain"] = StepClock.median(clocks["plain"].gaps() + clocks["plain_again"].gaps())
    t = {name: job.seconds for name, job in jobs.items() if name != "plain_again"}
    t["plain"] = (jobs["plain"].seconds + jobs["plain_again"].seconds) / 2
    c_video, c_image = step_seconds["plain"], step_seconds["image"]
    fixed = t["plain"] - STEPS * c_video
    floor_seconds = {"plain": t["plain"], "i4vgen": STEPS * c_image + (K + N_RE) * c_video + fixed,
                     "freeinit": 2 * STEPS * c_video + fixed}
    floors = {name: value / t["plain"] for name, value in floor_seconds.items()}
    ratios = {name: t[name] / t["plain"] for name in ("plain", "i4vgen", "freeinit")}
    host, machine = host_and_machine(webui)
    table = {
        "host": host,
        "machine": machine,
        "command": "I4VGEN_WEBUI_URL=... I4VGEN_WEBUI_COST_JSON=bench/results/webui/<name>.json make test-webui "
                   "(tests/webui_api/test_txt2img_live.py::test_cost_model), then python -m bench.report",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"steps": STEPS, "frames": FRAMES, "candidates": CANDIDATES, "size": f"{SIZE}x{SIZE}",
                     "sampler": "Euler a", "nivsds_iterations": K, "regeneration_steps": N_RE},
        "seconds_per_job": {name: round(value, 2) for name, value in t.items()},
        "seconds_per_step": {name: round(value, 3) for name, value in step_seconds.items()},
        "unet_calls": {"plain": STEPS, "i4vgen": dict(i4vgen_calls), "freeinit": 2 * STEPS},
        "call_price_s": {"video": round(c_video, 3), "image_over_candidates": round(c_image, 3),
                         "r": round(c_image / c_video, 3), "fixed_per_plain_job": round(fixed, 2)},
        "ratio": {name: round(value, 3) for name, value in ratios.items()},
        "floor": {name: round(value, 3) for name, value in floors.items()},
        "ratio_over_floor": {name: round(ratios[name] / floors[name], 3) for name in ratios},
        "method": "client wall time per HTTP job on a warm server, one run each (plain: the mean of a run before and "
                  "after the others); call prices = the host's median time between sampling steps "
                  "(/sdapi/v1/progress polled every 0.1 s); FreeInit = 2 rounds of S video calls",
    }
    measured["cost"] = table
    path = os.environ.get("I4VGEN_WEBUI_COST_JSON")
    if path:
        with open(path, "w") as handle:
            json.dump(table, handle, indent=2)
    assert ratios["freeinit"] > 1.2, f"the clock does not resolve FreeInit's second round: {table}"
    assert table["ratio_over_floor"]["i4vgen"] <= 1.05, f"I4VGen costs more than 5% over its call floor: {table}"

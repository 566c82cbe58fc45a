"""bench/compare.py on the tiny demo model: the JSON it writes, and UNet-call counts that follow the cost model
(plain S, FreeInit 3S and 5S, I4VGen S + K + n_re). Times are never checked: they are the machine's."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS, FRAMES = 3, 2
METHODS = {"plain", "plain-diffusers", "freeinit-3", "freeinit-5", "i4vgen-official", "i4vgen-paper"}
METHOD_FIELDS = {"method", "median_seconds", "ratio_to_plain", "unet_calls", "call_floor", "call_floor_ratio",
                 "peak_rss_mb", "stage_seconds", "vae_decoded_frames"}


def run_bench(tmp: Path, cache: Path, *extra: str) -> tuple[dict, Path]:
    out = tmp / "out.json"
    markdown = tmp / "RESULTS.md"
    command = [sys.executable, str(REPO / "bench" / "compare.py"), "--model", "tiny", "--repeats", "1",
               "--frames", str(FRAMES), "--steps", str(STEPS), "--calibration-rounds", "1", "--threads", "1",
               "--json", str(out), "--results-dir", str(tmp / "results"), "--markdown", str(markdown), *extra]
    env = {**os.environ, "I4VGEN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text(encoding="utf-8")), markdown


@pytest.fixture(scope="module")
def bench(tmp_path_factory, demo_model_dir) -> tuple[dict, Path]:
    """One full comparison; ``demo_model_dir`` is the session's tiny model, reused through its cache folder."""
    return run_bench(tmp_path_factory.mktemp("bench"), demo_model_dir.parent)


def nivsds_iterations(steps: int) -> int:
    return int(steps * 0.6) + 1  # both presets: p = 0.6 (K = int(S*p) + 1)


def test_json_has_one_object_per_method_with_the_issue_fields(bench):
    result, _ = bench
    assert set(result) == {"run", "methods", "targets"}
    methods = {m["method"]: m for m in result["methods"]}
    assert set(methods) == METHODS
    for m in methods.values():
        assert METHOD_FIELDS <= set(m), m["method"]
        assert m["median_seconds"] > 0 and m["peak_rss_mb"] > 0
        assert m["unet_calls"]["total"] == sum(v for k, v in m["unet_calls"].items() if k != "total")
    assert methods["plain"]["ratio_to_plain"] == 1.0
    run = result["run"]
    assert run["model"] == "tiny" and run["settings"]["candidates"] == FRAMES
    assert run["versions"]["diffusers"] and run["machine"]["cpu_count"] >= 1
    assert (Path(run["model_path"]) / "unet").is_dir()


def test_unet_calls_follow_the_cost_model(bench):
    result, _ = bench
    methods = {m["method"]: m for m in result["methods"]}
    k = nivsds_iterations(STEPS)
    expected_totals = {"plain": STEPS, "plain-diffusers": STEPS, "freeinit-3": 3 * STEPS, "freeinit-5": 5 * STEPS,
                       "i4vgen-official": STEPS + k + STEPS, "i4vgen-paper": STEPS + k + STEPS}
    for name, total in expected_totals.items():
        m = methods[name]
        assert m["unet_calls"]["total"] == total, name
        hooks = m["hook_unet_calls"]  # counted by forward hooks on the two UNet views, not by the code under test
        assert hooks["video"] + hooks["image"] == total, name
        assert m["unet_calls_match"] is True, name
    for name in ("i4vgen-official", "i4vgen-paper"):
        m = methods[name]
        assert m["unet_calls"] == {"anchor": STEPS, "nivsds": k, "regeneration": STEPS, "total": 2 * STEPS + k}
        assert m["hook_unet_calls"] == {"image": STEPS, "video": k + STEPS}
        assert m["motion_calls_in_anchor_stage"] == 0
    assert methods["freeinit-5"]["unet_calls"] == {**{f"round_{i}": STEPS for i in range(1, 6)}, "total": 5 * STEPS}
    for name in ("plain", "plain-diffusers", "freeinit-3", "freeinit-5"):
        assert methods[name]["hook_unet_calls"]["image"] == 0


def test_call_floor_uses_the_measured_r(bench):
    result, _ = bench
    r = result["run"]["call_costs"]["r"]
    assert r > 0
    methods = {m["method"]: m for m in result["methods"]}
    k = nivsds_iterations(STEPS)
    assert methods["i4vgen-official"]["call_floor"] == pytest.approx((STEPS * r + k + STEPS) / STEPS)
    assert methods["freeinit-3"]["call_floor"] == 3 and methods["plain"]["call_floor"] == 1
    for m in methods.values():
        assert m["call_floor_ratio"] == pytest.approx(m["ratio_to_plain"] / m["call_floor"])


def test_only_output_and_scored_frames_are_decoded(bench):
    result, _ = bench
    for m in result["methods"]:
        expected = FRAMES + FRAMES if m["kind"] == "i4vgen" else FRAMES
        assert m["vae_decoded_frames"] == expected, m["method"]
    decode_targets = [t for t in result["targets"] if "decoded" in t["target"]]
    assert len(decode_targets) == len(METHODS) and all(t["status"] == "pass" for t in decode_targets)


def test_our_plain_loop_matches_diffusers_pipeline(bench):
    result, _ = bench
    diffusers_plain = next(m for m in result["methods"] if m["method"] == "plain-diffusers")
    assert diffusers_plain["max_pixel_diff_vs_plain"] <= 1


def test_targets_and_markdown_are_reported(bench):
    result, markdown = bench
    statuses = {t["status"] for t in result["targets"]}
    assert statuses <= {"pass", "miss", "n/a"}
    names = " ".join(t["target"] for t in result["targets"])
    for phrase in ("call floor", "outside UNet", "anchor step", "peak host memory", "decoded"):
        assert phrase in names
    text = markdown.read_text(encoding="utf-8")
    assert "## `tiny` on cpu" in text and "r = " in text
    for m in result["methods"]:
        assert m["label"] in text


def test_chunked_candidates_and_a_model_ranker(tmp_path, demo_model_dir):
    """Candidates batched 2 per UNet call cost ceil(N/2) calls per step; a real (tiny) ImageReward is loaded,
    scores, and is released before NI-VSDS."""
    from tests.rankers.ranker_fixtures import write_imagereward

    ranker_dir = write_imagereward(tmp_path / "imagereward")
    candidates = 3
    result, _ = run_bench(tmp_path, demo_model_dir.parent, "--methods", "i4vgen-official", "--candidates",
                          str(candidates), "--image-batch-size", "2", "--ranker", "imagereward",
                          "--ranker-path", str(ranker_dir))
    methods = {m["method"]: m for m in result["methods"]}
    assert set(methods) == {"plain", "i4vgen-official"}
    m = methods["i4vgen-official"]
    per_step = math.ceil(candidates / 2)
    assert m["unet_calls"]["anchor"] == STEPS * per_step
    assert m["hook_unet_calls"]["image"] == STEPS * per_step
    assert m["vae_decoded_frames"] == FRAMES + candidates
    assert m["ranker_weights_mb"] > 0
    assert m["ranker_released"] is True


def test_evs_rows_follow_the_cost_model(tmp_path, demo_model_dir):
    """Opt-in EVS rows at S = 10 (so the video block runs): 4 image-mode SDEdit steps + 1 re-evaluated step and 3
    video steps on top of the base method."""
    out = tmp_path / "out.json"
    command = [sys.executable, str(REPO / "bench" / "compare.py"), "--model", "tiny", "--repeats", "1",
               "--frames", "2", "--steps", "10", "--calibration-rounds", "1", "--threads", "1", "--json", str(out),
               "--results-dir", str(tmp_path / "results"), "--markdown", str(tmp_path / "R.md"),
               "--methods", "plain+evs,i4vgen+evs"]
    env = {**os.environ, "I4VGEN_CACHE": str(demo_model_dir.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    methods = {m["method"]: m for m in json.loads(out.read_text())["methods"]}
    assert set(methods) == {"plain", "plain+evs", "i4vgen+evs"}
    evs = {"evs_image": 5, "evs_video": 3, "evs_inversion": 0}
    assert methods["plain+evs"]["unet_calls"] == {"plain": 10, **evs, "total": 18}
    assert methods["i4vgen+evs"]["unet_calls"] == {"anchor": 10, "nivsds": 7, "regeneration": 10, **evs,
                                                  "total": 35}
    for name in ("plain+evs", "i4vgen+evs"):
        m = methods[name]
        assert m["unet_calls_match"] is True and m["call_floor"] > 1
        assert m["hook_unet_calls"]["image"] == 5 + (10 if name == "i4vgen+evs" else 0)


def test_the_benchmark_writes_outside_the_checkout_unless_asked(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    from bench import compare

    args = compare.build_parser().parse_args([])
    assert not args.update_committed
    monkeypatch.chdir(tmp_path)
    for path in (args.results_dir, args.markdown):
        assert REPO / "bench" not in path.resolve().parents
    written = []
    monkeypatch.setattr(compare, "write_markdown", lambda results, markdown: written.append((results, markdown)))
    compare.write_outputs({"x": 1}, args, "tiny")
    assert (tmp_path / "out" / "bench" / "results" / "tiny.json").exists()
    committed = compare.build_parser().parse_args(["--update-committed"])
    monkeypatch.setattr(compare.Path, "write_text", lambda self, *a, **k: written.append(self))
    compare.write_outputs({"x": 1}, committed, "tiny")
    assert written[-1] == (REPO / "bench" / "results", REPO / "docs" / "benchmark.md")


def test_the_recorded_command_reproduces_the_figures_wherever_they_were_written():
    sys.path.insert(0, str(REPO))
    from bench.compare import measurement_command

    argv = ["--model", "sd15-random", "--steps", "4", "--results-dir", "/tmp/r", "--markdown=/tmp/R.md",
            "--json", "x.json", "--update-committed", "--threads", "1"]
    assert measurement_command(argv) == "python bench/compare.py --model sd15-random --steps 4 --threads 1"


def live_cost_table(host: str, command: str, sampler: str, **figures) -> dict:
    """A live host's cost table as its suite's cost test writes it (settings of the live suites' tiny jobs)."""
    return {"host": host, "machine": "2 cores", "command": command, "date": "2026-12-07 22:00 UTC",
            "method": "S and 2S steps",
            "settings": {"steps": 4, "frames": 8, "candidates": 2, "size": "64x64", "sampler": sampler,
                         "nivsds_iterations": 3, "regeneration_steps": 4}, **figures}


def write_live_table(tmp_path, host_folder: str, table: dict) -> str:
    sys.path.insert(0, str(REPO))
    from bench.report import write_markdown

    (tmp_path / "results" / host_folder).mkdir(parents=True)
    (tmp_path / "results" / host_folder / "cpu.json").write_text(json.dumps(table), encoding="utf-8")
    return write_markdown(tmp_path / "results", tmp_path / "RESULTS.md").read_text(encoding="utf-8")


def test_live_webui_cost_tables_are_rendered_after_the_diffusers_sections(tmp_path):
    """bench/report.py adds one section per results/webui/*.json (what the live suite's cost test writes)."""
    table = live_cost_table(
        "AUTOMATIC1111 1.10.1 with i4vgen, sd-webui-animatediff", "make test-webui", "Euler a",
        seconds_per_job={"plain": 25.0, "i4vgen": 55.0, "freeinit": 45.0},
        unet_calls={"plain": 4, "i4vgen": {"anchor": 4, "nivsds": 3, "regeneration": 4, "total": 11}, "freeinit": 8},
        call_price_s={"video": 5.0, "image_over_candidates": 2.5, "r": 0.5, "fixed_per_plain_job": 5.0},
        ratio={"plain": 1.0, "i4vgen": 2.2, "freeinit": 1.8}, floor={"plain": 1.0, "i4vgen": 2.0, "freeinit": 1.8},
        ratio_over_floor={"plain": 1.0, "i4vgen": 1.1, "freeinit": 1.0})
    text = write_live_table(tmp_path, "webui", table)
    assert "## Inside the WebUI: AUTOMATIC1111 1.10.1" in text
    assert "| I4VGen, 'official' preset | 55.00 | 2.200 | 2.000 | 1.100 | 11 (anchor 4, nivsds 3, regeneration 4) |" in text
    assert "**r = 0.500**" in text
    assert "within 5% of its call floor: **miss** (1.100)" in text


def test_the_tables_go_between_the_markers_and_the_prose_around_them_stays(tmp_path):
    """docs/benchmark.md is hand-written around the generated tables: a rebuild replaces only what the markers
    enclose, and a document without them is never overwritten."""
    sys.path.insert(0, str(REPO))
    from bench.report import BEGIN, END, write_markdown

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny.json").write_text(
        (REPO / "bench" / "results" / "sd15-random.json").read_text(encoding="utf-8").replace(
            '"model": "sd15-random"', '"model": "tiny"', 1), encoding="utf-8")
    doc = tmp_path / "benchmark.md"
    doc.write_text(f"# Prose before\n\n{BEGIN}\n\nstale table\n\n{END}\n\n## Prose after\n", encoding="utf-8")
    text = write_markdown(tmp_path / "results", doc).read_text(encoding="utf-8")
    assert text.startswith(f"# Prose before\n\n{BEGIN}\n\n## `tiny` on cpu (float32)")
    assert text.endswith(f"{END}\n\n## Prose after\n") and "stale table" not in text
    assert write_markdown(tmp_path / "results", doc).read_text(encoding="utf-8") == text  # a rebuild is stable

    hand_written = tmp_path / "notes.md"
    hand_written.write_text("# Mine\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not overwritten"):
        write_markdown(tmp_path / "results", hand_written)
    assert hand_written.read_text(encoding="utf-8") == "# Mine\n"
    doc.write_text(f"# Prose\n\n{BEGIN}\n\nno end marker\n", encoding="utf-8")
    with pytest.raises(ValueError, match="end of the tables"):
        write_markdown(tmp_path / "results", doc)


def test_the_committed_benchmark_page_holds_the_tables_of_the_committed_results():
    """docs/benchmark.md's generated part is what ``python -m bench.report`` renders from bench/results/ today."""
    sys.path.insert(0, str(REPO))
    from bench.report import BEGIN, END, load_comfy_results, load_results, load_webui_results, render_tables

    document = (REPO / "docs" / "benchmark.md").read_text(encoding="utf-8")
    generated = document.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    results = REPO / "bench" / "results"
    tables = render_tables(load_results(results), load_webui_results(results), load_comfy_results(results))
    assert generated == tables.strip("\n")


def test_live_comfy_cost_tables_are_rendered_after_the_webui_sections(tmp_path):
    """bench/report.py adds one section per results/comfy/*.json (what the live ComfyUI suite's cost test writes)."""
    table = live_cost_table(
        "ComfyUI 0.3.64 with ComfyUI-AnimateDiff-Evolved and i4vgen", "make test-comfy", "DDIM",
        seconds_per_job={"plain": 100.0, "i4vgen": 190.0, "plain_2s": 180.0, "image": 40.0},
        unet_calls={"plain": 4, "i4vgen": {"anchor": 4, "nivsds": 3, "regeneration": 4, "total": 11}},
        call_price_s={"video": 20.0, "image_over_candidates": 5.0, "r": 0.25, "fixed_per_plain_job": 20.0},
        ratio={"plain": 1.0, "i4vgen": 1.9}, floor={"plain": 1.0, "i4vgen": 1.8},
        ratio_over_floor={"plain": 1.0, "i4vgen": 1.056})
    text = write_live_table(tmp_path, "comfy", table)
    assert "## Inside ComfyUI: ComfyUI 0.3.64" in text
    assert "| I4VGen node, 'official' preset | 190.00 | 1.900 | 1.800 | 1.056 | 11 (anchor 4, nivsds 3, regeneration 4) |" in text
    assert "**r = 0.250**" in text and "1.056 (over 5%)" in text

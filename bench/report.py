"""The results tables of docs/benchmark.md from every bench/results/<model>.json: machine, versions, settings, the
table, the targets, and the live-WebUI cost tables.

``python -m bench.report`` rebuilds the tables from the stored JSON without rerunning anything. In a document that
holds the ``BEGIN``/``END`` markers (docs/benchmark.md) only the text between them is replaced, so the hand-written
cost model and method around them stay; any other file is written whole as a results page of its own. ``--retarget``
first re-evaluates the targets from the stored measurements (after a change to ``costmodel.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from .costmodel import (
    ANCHOR_TOLERANCE,
    FLOOR_TOLERANCE,
    OUTSIDE_UNET_LIMIT,
    RSS_TOLERANCE,
    evaluate_targets,
    fill_cost_floors,
    projected_ratios,
)

HEADER = """# Benchmark results: I4VGen vs plain AnimateDiff vs FreeInit

Written by `bench/compare.py` (one section per `bench/results/<model>.json`; rerun the command shown in a section
to reproduce it). Cost model, method and how to read the columns: docs/benchmark.md.
"""

BEGIN = "<!-- bench/report.py writes everything from here to the end marker from bench/results/: do not edit -->"
END = "<!-- end of the tables written by bench/report.py -->"
COMMITTED_MARKDOWN = Path(__file__).resolve().parents[1] / "docs" / "benchmark.md"

ORDER = ("sd15-random", "tiny")


def load_results(results_dir: Path) -> List[Dict[str, Any]]:
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(results_dir).glob("*.json"))]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["run"]["model"], len(ORDER)), r["run"]["model"]))


def _calls(calls: Dict[str, int]) -> str:
    stages = [f"{k} {v}" for k, v in calls.items() if k != "total"]
    return f"{calls['total']} ({', '.join(stages)})" if len(stages) > 1 else str(calls["total"])


def _mb(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render_section(result: Dict[str, Any]) -> str:
    run, methods, targets = result["run"], result["methods"], result["targets"]
    s, m, costs = run["settings"], run["machine"], run["call_costs"]
    lines: List[str] = []
    lines.append(f"## `{run['model']}` on {run['device']} ({run['dtype']})\n")
    lines.append(f"Command: `{run['command']}`  ")
    lines.append(f"Run at {run['started']} UTC, {run['benchmark_seconds']:.0f} s in all.\n")
    lines.append(f"- Model: {run['model_description']}")
    lines.append(f"- Machine: {m['cpu']}, {m['cpu_count']} cores, {m['ram_gb']:.0f} GB RAM; torch threads "
                 f"{run['threads']}; GPU: {m['gpu']}")
    lines.append(f"- Model load {run['load_seconds']:.1f} s (not in any method's time).")
    loads = ", ".join(f"{a:.2f}" for a in m["load_average_per_repeat"])
    lines.append(f"- Load average (1 min) at the start {m['load_average_start'][0]:.2f}, after each repeat {loads}, "
                 "on a machine shared with other jobs: absolute seconds are noisy, ratios within one repeat less so "
                 "(methods are interleaved and their order rotates every repeat).")
    lines.append(f"- Versions: {', '.join(f'{k} {v}' for k, v in run['versions'].items())}")
    lines.append(f"- Settings: {s['width']}x{s['height']} px ({s['latent_height']}x{s['latent_width']} latents), "
                 f"F = {s['frames']} frames, N = {s['candidates']} candidates, S = {s['steps']} steps, "
                 f"K = {s['nivsds_iterations']} NI-VSDS iterations, n_re = {s['regen_steps']} regeneration steps, "
                 f"guidance {s['guidance']}, seed {s['seed']}, prompt \"{s['prompt']}\", {s['repeats']} timed "
                 f"repeats after a warm-up, ranker `{s['ranker']}`"
                 + (" (candidates are still decoded and scored; scoring itself costs nothing)" if s['ranker'] == 'none' else ""))
    lines.append(f"- Call costs (medians of {costs['rounds']} alternating calls): one image-mode call over the "
                 f"{s['candidates']} candidates {costs['image_call_seconds']:.3f} s, one video call over "
                 f"{s['frames']} frames {costs['video_call_seconds']:.3f} s, so **r = {costs['r']:.3f}**; motion "
                 f"modules take {costs['motion_share']:.1%} of a video call; VAE decode "
                 f"{costs['decode_seconds_per_frame']:.3f} s per frame; prompt encoding {costs['text_encoding_seconds']:.3f} s.")
    lines.append(f"- Memory: {run['rss_method']}.\n")

    clock = run.get("clock", "wall")
    lines.append(f"Times, ratios and shares below are on the **{clock}** clock"
                 + (" (CPU seconds of the benchmark process: the work itself, without the time the shared machine "
                    "gave to other jobs); median wall seconds and the wall-time ratio are given too.\n"
                    if clock == "cpu" else ".\n"))
    lines.append(f"| method | median s ({clock}) | median wall s | x plain | x plain (wall) | call floor | "
                 "x plain / call floor | cost floor | x plain / cost floor | UNet calls | UNet s | outside UNet | "
                 "VAE frames | peak RSS MB (growth) | peak GPU MB |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in methods:
        lines.append(
            f"| {r['label']} | {r['median_seconds']:.2f} | {r['median_wall_seconds']:.2f} | "
            f"{r['ratio_to_plain']:.3f} | {r['ratio_to_plain_wall']:.3f} | {r['call_floor']:.3f} | "
            f"{r['call_floor_ratio']:.3f} | {r['cost_floor']:.3f} | {r['cost_floor_ratio']:.3f} | "
            f"{_calls(r['unet_calls'])} | {r['unet_seconds']:.2f} | "
            f"{r['outside_unet_share']:.1%} | {r['vae_decoded_frames']} | {_mb(r['peak_rss_mb'])} "
            f"({_mb(r['peak_rss_delta_mb'])}) | {_mb(r['peak_gpu_mb'])} |")
    lines.append("")
    if s["steps"] != 25:
        p = projected_ratios(run, 25)
        lines.append(f"Priced at S = 25 with these measured call costs (same F, N, resolution; decodes and text "
                     f"encoding included): I4VGen (both presets) {p['i4vgen']:.2f}x plain, FreeInit-3 "
                     f"{p['freeinit-3']:.2f}x, FreeInit-5 {p['freeinit-5']:.2f}x (the paper, V100: I4VGen 2.47x, "
                     f"FreeInit-5 5.23x).\n")
    lines.append("Seconds per stage (medians):\n")
    lines.append("| method | stage seconds |")
    lines.append("|---|---|")
    for r in methods:
        stages = ", ".join(f"{k} {v:.3f}" for k, v in r["stage_seconds"].items())
        lines.append(f"| {r['label']} | {stages} |")
    lines.append("")
    diffusers = next((r for r in methods if r["method"] == "plain-diffusers"), None)
    if diffusers is not None and diffusers.get("max_pixel_diff_vs_plain") is not None:
        lines.append(f"Our DDIM loop and diffusers' `AnimateDiffPipeline` give frames that differ by at most "
                     f"{diffusers['max_pixel_diff_vs_plain']} (of 255) from the same start noise.\n")
    lines.append("Targets (issue 8), measured:\n")
    lines.append("| target | goal | status | measured | detail |")
    lines.append("|---|---|---|---|---|")
    for t in targets:
        lines.append(f"| {t['target']} | {t['goal']} | **{t['status']}** | {t['measured']} | {t['detail']} |")
    lines.append("")
    lines.append(f"Tolerances: floor {FLOOR_TOLERANCE:.0%}, outside-UNet limit {OUTSIDE_UNET_LIMIT:.0%}, anchor step "
                 f"{ANCHOR_TOLERANCE:.0%} (two medians of different calls), RSS {RSS_TOLERANCE:.0%} of the plain peak.")
    for note in run.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


WEBUI_METHODS = (("plain", "AnimateDiff"), ("i4vgen", "I4VGen, 'official' preset"), ("freeinit", "FreeInit, 2 rounds"))


def _live_cost_lines(table: Dict[str, Any], heading: str, prices: str, methods: Sequence[Tuple[str, str]]) -> List[str]:
    """The part a live host's cost section shares: what ran, the call prices and one row per method."""
    s, price, calls = table["settings"], table["call_price_s"], table["unet_calls"]
    r = f"{price['r']:.3f}" if price.get("r") is not None else "n/a"
    lines = [
        heading, "",
        f"Command: `{table['command']}`  ",
        f"Run at {table['date']}.", "",
        f"- Machine: {table['machine']}",
        f"- Settings: {s['size']} px, F = {s['frames']} frames, N = {s['candidates']} candidates, S = {s['steps']} "
        f"steps, K = {s['nivsds_iterations']}, n_re = {s['regeneration_steps']}, sampler {s['sampler']}, ranker none",
        f"- Call prices {prices}: one video call {price['video']:.3f} s, one image-mode call over the "
        f"{s['candidates']} candidates {price['image_over_candidates']:.3f} s, so **r = {r}**; a plain job's fixed "
        f"costs {price['fixed_per_plain_job']:.2f} s.", "",
        "| method | s per job | x plain | call floor | x plain / call floor | UNet calls |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, label in methods:
        count = calls[key]
        lines.append(f"| {label} | {table['seconds_per_job'][key]:.2f} | {table['ratio'][key]:.3f} | "
                     f"{table['floor'][key]:.3f} | {table['ratio_over_floor'][key]:.3f} | "
                     f"{_calls(count) if isinstance(count, dict) else count} |")
    return lines


def render_webui_section(table: Dict[str, Any]) -> str:
    """A live-WebUI cost table, as ``tests/webui_api/test_txt2img_live.py::test_cost_model`` measures it."""
    lines = _live_cost_lines(table, f"## Inside the WebUI: {table['host']}",
                             f"from the host's own clock ({table['method']})", WEBUI_METHODS)
    verdict = "pass" if table["ratio_over_floor"]["i4vgen"] <= 1.05 else "miss"
    lines += ["", f"Target: I4VGen within 5% of its call floor: **{verdict}** "
              f"({table['ratio_over_floor']['i4vgen']:.3f}). One run per method on a shared CPU: FreeInit's row, which "
              "carries no code of ours, shows how far a ratio strays from its floor by noise alone.", ""]
    return "\n".join(lines)


def load_webui_results(results_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((Path(results_dir) / "webui").glob("*.json"))]


COMFY_METHODS = (("plain", "AnimateDiff-Evolved (KSampler)"), ("i4vgen", "I4VGen node, 'official' preset"))


def render_comfy_section(table: Dict[str, Any]) -> str:
    """A live-ComfyUI cost table, as ``tests/comfy_api/test_comfy_live.py::test_cost_against_a_plain_ade_job``
    measures it."""
    lines = _live_cost_lines(table, f"## Inside ComfyUI: {table['host']}", f"({table['method']})", COMFY_METHODS)
    over = table["ratio_over_floor"]["i4vgen"]
    lines += ["", f"I4VGen against its call floor: {over:.3f} ({'within' if over <= 1.05 else 'over'} 5%). Every "
              "I4VGen UNet call runs in a ComfyUI sampling session of its own stage (one for the candidates, one per "
              "NI-VSDS call, one for the regeneration), so the session set-up is in this ratio.", ""]
    return "\n".join(lines)


def load_comfy_results(results_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((Path(results_dir) / "comfy").glob("*.json"))]


def render_tables(results: Iterable[Dict[str, Any]], webui: Iterable[Dict[str, Any]] = (),
                  comfy: Iterable[Dict[str, Any]] = ()) -> str:
    return "\n".join([render_section(r) for r in results] + [render_webui_section(t) for t in webui]
                     + [render_comfy_section(t) for t in comfy])


def render_markdown(results: Iterable[Dict[str, Any]], webui: Iterable[Dict[str, Any]] = (),
                    comfy: Iterable[Dict[str, Any]] = ()) -> str:
    return HEADER + "\n" + render_tables(results, webui, comfy)


def splice_tables(document: str, tables: str, name: str = "the document") -> str:
    """``document`` with the text between ``BEGIN`` and ``END`` replaced by ``tables``."""
    head, marker, rest = document.partition(BEGIN)
    if not marker or END not in rest:
        raise ValueError(f"{name}: needs the lines {BEGIN!r} and, after it, {END!r}")
    return head + BEGIN + "\n\n" + tables.rstrip("\n") + "\n\n" + END + rest.split(END, 1)[1]


def write_markdown(results_dir: Path, path: Path) -> Path:
    tables = render_tables(load_results(results_dir), load_webui_results(results_dir), load_comfy_results(results_dir))
    path = Path(path)
    if path.exists():
        document = path.read_text(encoding="utf-8")
        if BEGIN in document:
            path.write_text(splice_tables(document, tables, str(path)), encoding="utf-8")
            return path
        if not document.startswith(HEADER.splitlines()[0]):
            raise ValueError(f"{path} is neither a results page written by bench/report.py nor a document with its "
                             f"markers ({BEGIN!r} ... {END!r}): not overwritten")
    path.write_text(HEADER + "\n" + tables, encoding="utf-8")
    return path


def retarget(results_dir: Path) -> None:
    for path in sorted(Path(results_dir).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        fill_cost_floors(result["methods"], result["run"])
        result["targets"] = evaluate_targets(result["methods"], result["run"])
        path.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")


def main(argv=None) -> None:
    import argparse

    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Rebuild docs/benchmark.md's tables from the stored results.")
    parser.add_argument("--results-dir", type=Path, default=here / "results")
    parser.add_argument("--markdown", type=Path, default=COMMITTED_MARKDOWN,
                        help="a document with the markers (only the tables between them change) or a results page")
    parser.add_argument("--retarget", action="store_true", help="re-evaluate the targets from the stored numbers")
    args = parser.parse_args(argv)
    if args.retarget:
        retarget(args.results_dir)
    print(write_markdown(args.results_dir, args.markdown))


if __name__ == "__main__":
    main()

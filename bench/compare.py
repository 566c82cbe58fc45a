"""Plain AnimateDiff, FreeInit (3 and 5 rounds) and I4VGen (official and paper presets) side by side.

    python bench/compare.py --model tiny|sd15-random|PATH [--motion-module PATH] [--frames F] [--steps S]
        [--width W --height H] [--repeats R] [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--json OUT]
        [--threads N] [--clock wall|cpu] [--ranker NAME --ranker-path DIR] [--methods a,b,...]

One process, one loaded model, the same prompt, seed and resolution for every method. First the call costs are
measured (this is also the warm-up), then R repeats run every method once each, in an order that rotates
every repeat. Writes the JSON to --json and to <results-dir>/<model>.json and rebuilds the tables (with
--update-committed: bench/results/<model>.json and the tables in docs/benchmark.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import costmodel  # noqa: E402
from bench.calibrate import measure_call_costs  # noqa: E402
from bench.methods import BenchSetup, Method, Outcome, all_methods, evs_methods  # noqa: E402
from bench.probes import CLOCKS, ComponentProbe, MemoryWindow, diff, now, rss_method, set_clock  # noqa: E402
from bench.report import COMMITTED_MARKDOWN, write_markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (the embedded demo model), 'sd15-random' (full-size SD1.5 + mm v2, random weights, "
                        "built and cached offline) or a model folder / single file")
    p.add_argument("--motion-module", help="motion module for a model without one (folder or mm_*.ckpt)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--candidates", type=int, help="N anchor candidates (default: = frames, as the official code)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--width", type=int, help="default: the model's size")
    p.add_argument("--height", type=int, help="default: the model's size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration-rounds", type=int, default=3, help="alternating image/video calls timed for r")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                   help="what ratios and stage times are measured in: wall time, or this process's CPU time (for a "
                        "CPU run with --threads 1 on a machine shared with other jobs); both totals are always kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="a corgi running on the beach")
    p.add_argument("--image-batch-size", type=int, help="candidates per image-mode UNet call (default: all N)")
    p.add_argument("--ranker", default="none", help="ranker scoring the candidates ('none' still decodes them)")
    p.add_argument("--ranker-path", help="folder with the ranker's files")
    p.add_argument("--methods", help="comma-separated subset of: "
                   + ", ".join(m.name for m in all_methods() + evs_methods()) + " (the EVS rows run only when named)")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--results-dir", type=Path, default=Path("out/bench/results"),
                   help="where <model>.json is written (default: out/bench/results under the current folder)")
    p.add_argument("--markdown", type=Path, default=Path("out/bench/RESULTS.md"),
                   help="the table rebuilt from --results-dir (default: out/bench/RESULTS.md)")
    p.add_argument("--update-committed", action="store_true",
                   help="write into the checkout's bench/results/ and docs/benchmark.md's tables (the committed ones)")
    return p


_OUTPUT_FLAGS = {"--results-dir": 1, "--markdown": 1, "--json": 1, "--update-committed": 0}


def measurement_command(argv: list) -> str:
    """The command that reproduces the figures: the flags that choose where results are written are left out."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        flag, _, inline = arg.partition("=")
        if flag in _OUTPUT_FLAGS:
            skip = 0 if inline else _OUTPUT_FLAGS[flag]
            continue
        kept.append(arg)
    return "python bench/compare.py " + " ".join(shlex.quote(a) for a in kept)


# ---- model --------------------------------------------------------------------------------------------------
def resolve_model(name: str) -> tuple[str, str]:
    """(short name for the results file, path to load)."""
    if name == "tiny":
        from i4vgen_ext.backbones.tiny import ensure_demo_model

        return "tiny", str(ensure_demo_model())
    if name == "sd15-random":
        from bench.sd15_random import ensure_sd15_random

        return "sd15-random", str(ensure_sd15_random())
    path = Path(name).expanduser()
    return path.stem if path.is_file() else path.name, str(path)


def describe_model(short: str, backbone) -> str:
    if short == "tiny":
        return "the embedded tiny demo model (SD1.5 topology at tiny widths, random weights)"
    if short == "sd15-random":
        return ("full-size SD1.5 UNet + AnimateDiff motion module v2 + SD1.5 VAE + CLIP ViT-L text encoder, random "
                "weights (bench/sd15_random.py)")
    return str(backbone.description.get("path", short))


# ---- one method, one repeat ---------------------------------------------------------------------------------
def run_once(method: Method, setup: BenchSetup, probe: ComponentProbe) -> Dict[str, Any]:
    device = torch.device(setup.backbone.device)
    before = probe.snapshot()
    with MemoryWindow(device, label=probe.current) as memory:
        started, wall_started, cpu_started = now(), time.perf_counter(), time.process_time()
        outcome: Outcome = method.run(setup, probe)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = now() - started
        wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    components = diff(probe.snapshot(), before)
    return {"seconds": seconds, "wall": wall, "cpu": cpu, "outcome": outcome, "components": components,
            "memory": memory}


def stage_seconds(method: Method, record: Dict[str, Any]) -> Dict[str, float]:
    seconds = dict(record["outcome"].seconds)
    if "pipeline" in seconds:  # diffusers: split by the probe
        comp = record["components"]
        total = seconds.pop("pipeline")
        text, decode = comp["text_encoder"]["seconds"], comp["vae_decode"]["seconds"]
        seconds = {"text_encoding": text, "denoise": total - text - decode, "decode": decode}
    return seconds


def _median_dict(dicts: Sequence[Dict[str, float]]) -> Dict[str, float]:
    return {k: statistics.median(d[k] for d in dicts) for k in dicts[0]}


def _evs_expectations(method: Method, setup: BenchSetup, costs) -> tuple:
    """Calls, call floor and decoded frames of ``<base>+evs``: the base method's, plus EVS's image-mode steps (over
    F frames; r prices them as N = F candidates) and its video block."""
    from i4vgen_ext.core.evs import EVSSettings

    steps = setup.steps
    plan = EVSSettings().plan(steps)
    image = plan["image_steps"] + (1 if plan["block_at"] else 0)
    if method.evs_base == "plain":
        expected: Dict[str, int] = {"plain": steps}
        floor = 1.0
        decoded = setup.frames
    else:
        s = setup.settings("official")
        expected = {k: v for k, v in costmodel.expected_calls(
            "i4vgen", steps, image_calls_per_step=costs.image_calls_per_step, nivsds=s.nivsds_iterations,
            regen=s.regen_steps).items() if k != "total"}
        floor = costmodel.call_floor("i4vgen", steps, costs.r, nivsds=s.nivsds_iterations, regen=s.regen_steps)
        decoded = setup.frames + setup.candidates
    expected.update(evs_image=image, evs_video=plan["video_steps"], evs_inversion=0)
    expected["total"] = sum(expected.values())
    floor += (image * costs.r + plan["video_steps"]) / steps
    return expected, floor, decoded


def summarize(method: Method, records: List[Dict[str, Any]], setup: BenchSetup, costs, n_motion: int,
              plain_frames: Optional[list]) -> Dict[str, Any]:
    first = records[0]
    comp0 = first["components"]
    outcome0: Outcome = first["outcome"]
    steps = setup.steps
    components = _median_dict([{k: v["seconds"] for k, v in r["components"].items()} for r in records])
    median = statistics.median(r["seconds"] for r in records)
    unet_seconds = components["video_unet"] + components["image_unet"]
    video_calls, image_calls = int(comp0["video_unet"]["calls"]), int(comp0["image_unet"]["calls"])
    extra = dict(outcome0.extra)
    settings: Dict[str, Any] = {"steps": steps}
    if method.kind == "i4vgen":
        s = setup.settings(method.preset)
        settings.update(preset=method.preset, nivsds_fraction=s.nivsds_fraction, regen_strength=s.regen_strength,
                        alpha_schedule=s.alpha_schedule, alphas=s.alphas(), nivsds_iterations=s.nivsds_iterations,
                        regen_steps=s.regen_steps)
        expected = costmodel.expected_calls("i4vgen", steps, image_calls_per_step=costs.image_calls_per_step,
                                            nivsds=s.nivsds_iterations, regen=s.regen_steps)
        floor = costmodel.call_floor("i4vgen", steps, costs.r, nivsds=s.nivsds_iterations, regen=s.regen_steps)
        decoded_expected = setup.frames + setup.candidates
    elif method.kind == "evs":
        expected, floor, decoded_expected = _evs_expectations(method, setup, costs)
    else:
        expected = costmodel.expected_calls(method.kind, steps, iterations=method.iterations)
        floor = costmodel.call_floor(method.kind, steps, costs.r, iterations=method.iterations)
        decoded_expected = setup.frames
    constant = all(r["outcome"].unet_calls == outcome0.unet_calls for r in records)
    pixel_diff = None
    if plain_frames is not None and method.name == "plain-diffusers":
        pixel_diff = int(max(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
                             for a, b in zip(outcome0.frames, plain_frames)))
    released = None  # nothing to release for the 'none' ranker
    if extra.get("ranker_weights_mb", 0) > 0 and "ranker_loaded_during_nivsds" in extra:
        released = not extra["ranker_loaded_during_nivsds"]
    peak_gpu = [r["memory"].peak_gpu_mb for r in records if r["memory"].peak_gpu_mb is not None]
    return {
        "method": method.name,
        "label": method.label,
        "kind": method.kind,
        "median_seconds": median,  # on the run's clock (run.clock)
        "seconds": [r["seconds"] for r in records],
        "median_wall_seconds": statistics.median(r["wall"] for r in records),
        "median_cpu_seconds": statistics.median(r["cpu"] for r in records),
        "wall_seconds": [r["wall"] for r in records],
        "cpu_seconds": [r["cpu"] for r in records],
        "ratio_to_plain": None,  # filled in once plain is known
        "ratio_to_plain_wall": None,
        "call_floor": floor,
        "call_floor_ratio": None,
        "unet_ratio_to_plain": None,
        "unet_calls": outcome0.unet_calls,
        "unet_calls_expected": expected,
        "unet_calls_match": constant and outcome0.unet_calls == expected,
        "hook_unet_calls": {"video": video_calls, "image": image_calls},
        "motion_module_calls": int(comp0["motion_modules"]["calls"]),
        "motion_modules_per_video_call": n_motion,
        "motion_calls_in_anchor_stage": int(comp0["motion_modules"]["calls"]) - video_calls * n_motion,
        "candidates_per_image_call": (setup.image_batch_size or setup.candidates) if method.kind == "i4vgen" else None,
        "stage_seconds": _median_dict([stage_seconds(method, r) for r in records]),
        "component_seconds": components,
        "unet_seconds": unet_seconds,
        "outside_unet_seconds": median - unet_seconds,
        "outside_unet_share": (median - unet_seconds) / median,
        "vae_decoded_frames": int(comp0["vae_decode"]["items"]),
        "vae_decoded_expected": decoded_expected,
        "peak_rss_mb": max(r["memory"].peak_rss_mb for r in records),
        "rss_start_mb": min(r["memory"].rss_start_mb for r in records),
        "peak_rss_delta_mb": max(r["memory"].peak_rss_mb - r["memory"].rss_start_mb for r in records),
        "peak_rss_growth_by_component_mb": {
            k: max(r["memory"].growth_by_label_mb.get(k, float("-inf")) for r in records)
            for k in sorted({k for r in records for k in r["memory"].growth_by_label_mb})},
        "peak_gpu_mb": max(peak_gpu) if peak_gpu else None,
        "ranker_weights_mb": extra.get("ranker_weights_mb", 0.0),
        "ranker_load_seconds": extra.get("ranker_load_seconds"),
        "ranker_released": released,
        "max_pixel_diff_vs_plain": pixel_diff,
        "settings": settings,
        "extra": extra,
    }


def fill_ratios(methods: List[Dict[str, Any]]) -> None:
    plain = next((m for m in methods if m["method"] == "plain"), None) or methods[0]
    for m in methods:
        m["ratio_to_plain"] = m["median_seconds"] / plain["median_seconds"]
        m["ratio_to_plain_wall"] = m["median_wall_seconds"] / plain["median_wall_seconds"]
        m["call_floor_ratio"] = m["ratio_to_plain"] / m["call_floor"]
        m["unet_ratio_to_plain"] = m["unet_seconds"] / plain["unet_seconds"]


# ---- machine ------------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = psutil.virtual_memory().total / 2**30
    except ImportError:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used (no GPU on this machine)" \
        if not torch.cuda.is_available() else "none used (--device cpu)"
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "ram_gb": ram, "gpu": gpu, "load_average_start": os.getloadavg()}


def versions() -> Dict[str, str]:
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


# ---- main ---------------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def select_methods(spec: Optional[str]) -> List[Method]:
    methods = all_methods()
    if not spec:
        return methods
    methods += evs_methods()
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    known = {m.name for m in methods}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(known)}")
    if "plain" not in wanted:
        wanted.insert(0, "plain")  # every ratio is to plain AnimateDiff
    return [m for m in methods if m.name in wanted]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() > 1):
        log("warning: --clock cpu measures work only for a CPU run with --threads 1")
    if args.repeats < 1 or args.frames < 1 or args.steps < 1:
        raise SystemExit("--repeats, --frames and --steps must be at least 1")
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    bench_started = time.perf_counter()
    device = torch.device(args.device)
    machine = machine_info(device)
    methods = select_methods(args.methods)

    from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone

    short, path = resolve_model(args.model)
    log(f"loading {short} from {path}")
    load_started = time.perf_counter()
    backbone = DiffusersBackbone.load(path, args.motion_module, device=args.device, dtype=DTYPES[args.dtype])
    load_seconds = time.perf_counter() - load_started
    width, height = args.width or backbone.default_size[0], args.height or backbone.default_size[1]
    setup = BenchSetup(backbone, args.prompt, frames=args.frames, steps=args.steps,
                       candidates=args.candidates or args.frames, width=width, height=height, seed=args.seed,
                       image_batch_size=args.image_batch_size, ranker_name=args.ranker, ranker_path=args.ranker_path)
    official = setup.settings("official")  # validates sizes and counts before any model work
    if any(m.kind != "i4vgen" and m.name != "plain" for m in methods):
        setup.pipeline()

    with ComponentProbe(backbone) as probe:
        n_motion = len(backbone._motion_modules())
        log(f"warm-up and call costs ({args.calibration_rounds} rounds)")
        costs = measure_call_costs(setup, probe, args.calibration_rounds)
        log(f"r = {costs.r:.3f}, motion share {costs.motion_share:.1%}, video call {costs.video_call_seconds:.3f} s")
        records: Dict[str, List[Dict[str, Any]]] = {m.name: [] for m in methods}
        orders, loads = [], []
        for repeat in range(args.repeats):
            shift = repeat % len(methods)
            order = methods[shift:] + methods[:shift]
            orders.append([m.name for m in order])
            for method in order:
                record = run_once(method, setup, probe)
                records[method.name].append(record)
                log(f"repeat {repeat + 1}/{args.repeats} {method.name}: {record['seconds']:.2f} s ({args.clock}), "
                    f"UNet calls {record['outcome'].unet_calls['total']}, load {os.getloadavg()[0]:.2f}")
            loads.append(os.getloadavg()[0])

    plain_frames = records["plain"][0]["outcome"].frames
    summaries = [summarize(m, records[m.name], setup, costs, n_motion, plain_frames) for m in methods]
    fill_ratios(summaries)
    machine.update(load_average_per_repeat=loads, load_average_end=os.getloadavg())
    latent_h, latent_w = setup.latent_size
    run = {
        "model": short,
        "model_path": path,
        "model_description": describe_model(short, backbone),
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "command": measurement_command(argv if argv is not None else sys.argv[1:]),
        "started": started_at,
        "load_seconds": load_seconds,
        "settings": {"frames": setup.frames, "candidates": setup.candidates, "steps": setup.steps, "width": width,
                     "height": height, "latent_height": latent_h, "latent_width": latent_w,
                     "nivsds_iterations": official.nivsds_iterations, "regen_steps": official.regen_steps,
                     "guidance": setup.guidance, "seed": setup.seed, "prompt": setup.prompt, "repeats": args.repeats,
                     "image_batch_size": setup.image_batch_size, "ranker": setup.ranker_name},
        "machine": machine,
        "versions": versions(),
        "rss_method": rss_method(),
        "call_costs": costs.to_dict(),
        "method_order_per_repeat": orders,
        "notes": run_notes(device),
    }
    costmodel.fill_cost_floors(summaries, run)
    targets = costmodel.evaluate_targets(summaries, run)
    run["benchmark_seconds"] = time.perf_counter() - bench_started
    result = {"run": run, "methods": summaries, "targets": targets}
    write_outputs(result, args, short)
    print_summary(result)
    return result


def run_notes(device: torch.device) -> List[str]:
    notes = ["Speed presets: the settings offer only 'official' and 'paper' (same call counts: they differ in the "
             "NI-VSDS step sizes), so both are measured and no other preset exists to add."]
    if device.type == "cpu":
        notes.append("No GPU was available to this run: the fp16 512x512 / 16 frames / 25 steps GPU table of the "
                     "issue is still to be measured (`--device cuda --dtype float16 --width 512 --height 512 "
                     "--frames 16 --steps 25 --model sd15-random`).")
    return notes


def write_outputs(result: Dict[str, Any], args, short: str) -> None:
    if args.update_committed:
        args.results_dir, args.markdown = HERE / "results", COMMITTED_MARKDOWN
    text = json.dumps(result, indent=2, default=float)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{short}.json").write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text, encoding="utf-8")
    write_markdown(args.results_dir, args.markdown)


def print_summary(result: Dict[str, Any]) -> None:
    print(f"{'method':<18} {'median s':>9} {'wall s':>8} {'x plain':>8} {'floor':>7} {'x/floor':>8} {'UNet calls':>10}")
    for m in result["methods"]:
        print(f"{m['method']:<18} {m['median_seconds']:>9.2f} {m['median_wall_seconds']:>8.2f} "
              f"{m['ratio_to_plain']:>8.3f} {m['call_floor']:>7.3f} {m['call_floor_ratio']:>8.3f} "
              f"{m['unet_calls']['total']:>10}")
    for t in result["targets"]:
        print(f"[{t['status']:>4}] {t['target']}: {t['measured']}")


if __name__ == "__main__":
    main()

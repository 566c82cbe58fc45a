"""``i4vgen batch``: a whole prompt suite into one flat folder, resumable, split over the processes of
``accelerate launch`` or ``torchrun`` (one process without a launcher); docs/batch.md.

Each process checks the whole prompt file before any model work, loads the model (and ranker) once, takes its share
of the samples not yet complete (accelerate's ``split_between_processes`` of the same list in every process) and
runs them one by one on its own device. A sample's seed comes from the suite alone (``suite.py``), so every sample
is the same whichever process runs it and whether or not the suite was resumed."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..cli import FPS_MAX, _add_evs_arguments, _specs, add_generate_settings, generate_job
from ..core.settings import SEED_MAX, SettingsError
from ..generate import LOAD_COUNTS, Interrupted, generate, load_models, needs_ranker
from ..outputs import VIDEO_FORMATS
from .batch_folder import BatchFolder
from .suite import Sample, read_suite


def add_batch_parser(sub: Any) -> None:
    b = sub.add_parser("batch", help="Generate a whole prompt suite into one folder (resumable, multi-GPU).",
                       description="Every prompt of FILE, --samples-per-prompt times, as {prompt}-{index}.mp4 in "
                                   "DIR plus one batch.jsonl line each. A rerun resumes. Several GPUs: "
                                   "accelerate launch --num_processes N -m i4vgen_ext batch ...")
    b.add_argument("--prompts", required=True, type=Path, metavar="FILE",
                   help="One prompt a line, or (a .jsonl file) one JSON object a line: prompt, and optionally "
                        "negative_prompt, seed, name and generate's settings for that line.")
    b.add_argument("--out", required=True, type=Path, metavar="DIR", help="The flat output folder.")
    b.add_argument("--samples-per-prompt", type=int, default=1, metavar="N",
                   help="Videos per prompt, {prompt}-0 .. {prompt}-(N-1) (VBench asks for 5). Default 1.")
    add_generate_settings(b, seed=dict(
        default=0, help=f"Base seed: sample k of the p-th prompt (from 0) gets seed + p * N + k (mod 2^32); a "
                        f"line's own seed s gives s + k. Allowed: an integer in [0, {SEED_MAX}]. Default 0."))
    b.add_argument("--format", default="mp4", choices=VIDEO_FORMATS, help="Video format of every sample (mp4).")
    b.add_argument("--fps", type=float, default=8.0, help=f"Frames per second, in (0, {FPS_MAX:g}] (default 8).")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: each process on its accelerator (cuda:<local rank>) if there is one, else the CPU.")
    b.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="Model dtype (latents stay float32).")
    b.add_argument("--quiet", action="store_true", help="No progress bar, no line per sample.")
    _add_evs_arguments(b)


def run_batch(args: argparse.Namespace) -> int:
    """Exit status: 0 every sample of the suite complete, 130 stopped by Ctrl-C (rerun to resume)."""
    if args.samples_per_prompt < 1:
        raise SettingsError("samples_per_prompt", args.samples_per_prompt, "an integer >= 1")
    if args.seed is None or args.seed < 0:
        raise SettingsError("seed", args.seed, f"an integer in [0, {SEED_MAX}] (a batch's seeds are fixed)")
    device = _resolve_device(args.device)
    template = argparse.Namespace(**vars(args))
    template.device, template.save_latents, template.quiet, template.prompt = device, False, True, None
    _specs(template)  # the command line's own flags (fps, LoRA files) fail here, not as a line's fault
    samples = read_suite(args.prompts, samples_per_prompt=args.samples_per_prompt, base_seed=args.seed,
                         fmt=args.format, make_job=lambda values: _line_job(template, values))
    # Every line is good: from here on model work may start.
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device == "cuda":
        import torch

        torch.cuda.set_device(state.device)  # "cuda" in this process now means its own GPU
    folder = BatchFolder(args.out)
    plans = {s.file_name(args.format): plan_digest(s, args.format) for s in samples}
    if state.is_main_process:
        folder.prepare(plans)
    state.wait_for_everyone()
    finished = folder.finished(plans)
    todo = [s for s in samples if s.file_name(args.format) not in finished]
    with state.split_between_processes(todo) as share:
        mine = list(share)
    runner = _Runner(args, folder, plans, state.process_index, state.num_processes,
                     show_bar=state.is_main_process and not args.quiet)
    if state.is_main_process:
        runner.say(f"i4vgen: batch of {len(samples)} samples: {len(samples) - len(todo)} complete in {args.out}, "
                   f"{len(todo)} to run over {state.num_processes} process(es)")
    return runner.run(mine)


class _Runner:
    """One process's share, sample after sample, with one model load."""

    def __init__(self, args: argparse.Namespace, folder: BatchFolder, plans: Dict[str, str], rank: int,
                 processes: int, show_bar: bool) -> None:
        self.args, self.folder, self.plans = args, folder, plans
        self.rank, self.processes, self.show_bar = rank, processes, show_bar
        self.prefix = f"[{rank}/{processes}] " if processes > 1 else ""

    def say(self, text: str) -> None:
        if not self.args.quiet:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def run(self, mine: List[Sample]) -> int:
        if not mine:
            return 0
        self.loads_before = dict(LOAD_COUNTS)
        models = load_models(mine[0].job.model, _ranker_settings(mine))
        if models.backbone.description.get("demo"):
            self.say(f"i4vgen: {self.prefix}using the {models.backbone.description['name']}; pass --model for "
                     "real videos")
        from tqdm import tqdm

        done = 0
        with _StopAfterSample() as stop, tqdm(total=len(mine), unit="sample", dynamic_ncols=True,
                                              disable=not self.show_bar) as bar:
            for sample in mine:
                if stop.requested:
                    break
                try:
                    self._one(sample, models)
                except (Interrupted, KeyboardInterrupt):  # a second Ctrl-C: this sample is dropped whole
                    stop.requested = True
                    break
                done += 1
                bar.update(1)
        self.folder.tidy()
        if stop.requested and done < len(mine):
            print(f"i4vgen: {self.prefix}stopped after {done} of this process's {len(mine)} samples; everything "
                  "written is whole: rerun the same command to resume", file=sys.stderr)
            return 130
        return 0

    def _one(self, sample: Sample, models) -> None:
        file_name = sample.file_name(self.args.format)
        work = self.folder.work_folder(file_name)
        job = dataclasses.replace(sample.job, output=dataclasses.replace(sample.job.output, out=work))
        started = time.perf_counter()
        try:
            generate(job, models, announce=lambda text: None)
            run = json.loads((work / "run.json").read_text(encoding="utf-8"))
            record = {
                "name": sample.name, "prompt": sample.prompt, "sample": sample.index, "line": sample.line,
                "prompt_index": sample.prompt_index, "seed": run["seed"], "anchor_index": run["anchor_index"],
                "scores": run["scores"], "ranker": run["ranker"], "unet_calls": run["unet_calls"],
                "seconds": round(time.perf_counter() - started, 3), "stage_seconds": run["seconds"],
                "mode": run["mode"], "settings": run["settings"], "plan": self.plans[file_name],
                "process": {"index": self.rank, "count": self.processes, **self._loads()},
            }
            self.folder.land(work / f"video.{self.args.format}", file_name, record)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        anchor = "" if run["anchor_index"] is None else f"anchor {run['anchor_index']}, "
        self.say(f"i4vgen: {self.prefix}wrote {file_name} (seed {run['seed']}, {anchor}"
                 f"{run['unet_calls']['total']} UNet calls, {record['seconds']:.1f} s)")


    def _loads(self) -> Dict[str, int]:
        """Models and rankers this batch has loaded in this process so far (counted where they load)."""
        return {f"{kind}_loads": LOAD_COUNTS[kind] - self.loads_before[kind] for kind in ("model", "ranker")}


class _StopAfterSample:
    """Ctrl-C (SIGINT) or SIGTERM (a launcher stopping its workers) asks to stop once the running sample is
    written; a second one stops at once, dropping that sample (nothing of it is written)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "_StopAfterSample":
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("i4vgen: stopping after the sample running now (Ctrl-C again: at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def plan_digest(sample: Sample, fmt: str) -> str:
    """What makes a sample's video (settings with its seed, model, format): a finished sample counts on a rerun only
    when the rerun plans it the same way."""
    job = sample.job
    plan = {"settings": job.settings.to_dict(), "model": dataclasses.asdict(job.model),
            "anchor_image": str(job.anchor_image) if job.anchor_image else None,
            "image_batch_size": job.image_batch_size, "format": fmt, "fps": job.output.fps}
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _line_job(template: argparse.Namespace, values: Dict[str, Any]):
    """The generate job of the command line's settings with one line's values over them."""
    args = copy.copy(template)
    for key, value in values.items():
        setattr(args, key, value)
    return generate_job(args)


def _ranker_settings(samples: List[Sample]) -> Optional[Any]:
    """The settings to load the ranker with, if any of these samples ranks candidates (the ranker's own settings
    are the command line's, the same for every line)."""
    for sample in samples:
        settings = sample.job.settings
        if (needs_ranker(settings, sample.job.anchor_image is not None) and settings.anchor_index < 0
                and settings.ranker != "none"):
            return settings
    return None


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", "cuda", "cpu or auto (no CUDA device is visible)")
    return device

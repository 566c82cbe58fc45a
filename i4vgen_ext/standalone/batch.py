"""``i4vgen batch``: a whole prompt suite into one flat folder, resumable, split over the processes of
``accelerate launch`` or ``torchrun`` (one process without a launcher); docs/batch.md.

Each process checks the whole prompt file before any model work, loads the model (and ranker) once, takes its share
of the samples not yet complete (accelerate's ``split_between_processes`` of the same list in every process) and
runs them one by one on its own device. A sample's seed comes from the suite alone (``suite.py``), so every sample
is the same whichever process runs it and whether or not the suite was resumed."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..core.settings import SEED_MAX
from ..errors import Interrupted, SettingsError
from .batch_folder import BatchFolder
from .generate import LOAD_COUNTS, GenerateJob, generate, load_models, needs_ranker
from .suite import Sample, read_suite


@dataclass(frozen=True)
class BatchJob:
    prompts: Path
    out: Path
    samples_per_prompt: int
    base_seed: int
    fmt: str  # one of outputs.VIDEO_FORMATS
    make_job: Callable[[Dict[str, Any]], GenerateJob]  # a line's values -> its generate job (SettingsError if bad)
    quiet: bool = False


def run_batch(batch: BatchJob) -> int:
    """Exit status: 0 every sample of the suite complete, 130 stopped by Ctrl-C (rerun to resume)."""
    if batch.samples_per_prompt < 1:
        raise SettingsError("samples_per_prompt", batch.samples_per_prompt, "an integer >= 1")
    if not 0 <= batch.base_seed <= SEED_MAX:
        raise SettingsError("seed", batch.base_seed, f"an integer in [0, {SEED_MAX}] (a batch's seeds are fixed)")
    samples = read_suite(batch.prompts, samples_per_prompt=batch.samples_per_prompt, base_seed=batch.base_seed,
                         fmt=batch.fmt, make_job=batch.make_job)
    # Every line is good: from here on model work may start.
    from accelerate import PartialState

    device = samples[0].job.model.device
    state = PartialState(cpu=device == "cpu")
    if device == "cuda":
        import torch

        torch.cuda.set_device(state.device)  # "cuda" in this process now means its own GPU
    folder = BatchFolder(batch.out)
    plans = {s.file_name(batch.fmt): plan_digest(s, batch.fmt) for s in samples}
    failed: Optional[OSError] = None
    if state.is_main_process:
        try:
            folder.prepare(plans)
        except OSError as error:  # raised after the barrier: the other processes must not wait for it forever
            failed = error
    state.wait_for_everyone()
    if failed is not None:
        raise failed
    if not folder.out.is_dir():
        raise OSError(f"out = {str(folder.out)!r} could not be made (see the first process's error)")
    finished = folder.finished(plans)
    todo = [s for s in samples if s.file_name(batch.fmt) not in finished]
    with state.split_between_processes(todo) as share:
        mine = list(share)
    runner = _Runner(batch, folder, plans, state.process_index, state.num_processes,
                     show_bar=state.is_main_process and not batch.quiet)
    if state.is_main_process:
        runner.say(f"i4vgen: batch of {len(samples)} samples: {len(samples) - len(todo)} complete in {batch.out}, "
                   f"{len(todo)} to run over {state.num_processes} process(es)")
    return runner.run(mine)


class _Runner:
    """One process's share, sample after sample, with one model load."""

    def __init__(self, batch: BatchJob, folder: BatchFolder, plans: Dict[str, str], rank: int, processes: int,
                 show_bar: bool) -> None:
        self.batch, self.folder, self.plans = batch, folder, plans
        self.rank, self.processes, self.show_bar = rank, processes, show_bar
        self.prefix = f"[{rank}/{processes}] " if processes > 1 else ""

    def say(self, text: str) -> None:
        if not self.batch.quiet:
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
        file_name = sample.file_name(self.batch.fmt)
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
            self.folder.land(work / f"video.{self.batch.fmt}", file_name, record)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        anchor = "" if run["anchor_index"] is None else f"anchor {run['anchor_index']}, "
        self.say(f"i4vgen: {self.prefix}wrote {file_name} (seed {run['seed']}, {anchor}"
                 f"{run['unet_calls']['total']} UNet calls, {record['seconds']:.1f} s)")

    def _loads(self) -> Dict[str, int]:
        """Models and rankers this batch has loaded in this process so far (counted where they load)."""
        return {f"{kind}_loads": LOAD_COUNTS[kind] - self.loads_before[kind] for kind in ("model", "ranker")}


class _StopAfterSample:
    """Ctrl-C (SIGINT) or SIGTERM asks to stop once the running sample is written; a second Ctrl-C stops at once,
    dropping that sample (nothing of it is written). A SIGTERM never stops at once: torchrun sends one to its
    workers right after the Ctrl-C they got themselves."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "_StopAfterSample":
        self.requested, self.interrupts = False, 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.interrupts += signum == signal.SIGINT
        if self.interrupts >= 2:
            raise KeyboardInterrupt
        if not self.requested:
            print("i4vgen: stopping after the sample running now (Ctrl-C again: at once)", file=sys.stderr)
        self.requested = True

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


def _ranker_settings(samples: List[Sample]) -> Optional[Any]:
    """The settings to load the ranker with, if any of these samples ranks candidates (the ranker's own settings
    are the command line's, the same for every line)."""
    for sample in samples:
        settings = sample.job.settings
        if (needs_ranker(settings, sample.job.anchor_image is not None) and settings.anchor_index < 0
                and settings.ranker != "none"):
            return settings
    return None


def resolve_device(device: str) -> str:
    """auto: cuda when a GPU is visible (each process then takes its own), else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", "cuda", "cpu or auto (no CUDA device is visible)")
    return device

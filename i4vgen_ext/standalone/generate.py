"""The CLI's two jobs on diffusers, each reading top to bottom: check inputs, load, run the one composition
(``core.compose.run_mode``), write every output whole. They take typed jobs, not parsed arguments: ``cli.py`` is the
only module that knows argparse."""
from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..core.anchor_image import fit_to_video, load_anchor_image
from ..core.compose import STAGE_LABELS, plan_run, run_mode, seeded_noises
from ..core.denoiser import StepEvent
from ..core.evs import draw_evs_noises
from ..core.noise import seeded_generator
from ..core.settings import I4VGenSettings
from ..errors import Interrupted, SettingsError
from .outputs import OutputSet, candidates_sheet, save_latents, write_video


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (``model`` None: the embedded tiny demo model)."""

    backbone: str = "animatediff"
    model: Optional[str] = None
    motion_module: Optional[str] = None
    single_file_config: Optional[str] = None
    trust_pickle: bool = False
    loras: Tuple[Tuple[str, float], ...] = ()
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class OutputSpec:
    out: Path
    formats: Tuple[str, ...] = ("gif",)
    fps: float = 8.0
    save_latents: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class GenerateJob:
    settings: I4VGenSettings  # its ``mode`` and ``evs_*`` fields say what runs
    model: ModelSpec
    output: OutputSpec
    anchor_image: Optional[Path] = None
    image_batch_size: Optional[int] = None


@dataclass(frozen=True)
class RefineJob:
    video: Path
    settings: I4VGenSettings  # prompt, seed, steps, guidance, size and the evs_* fields
    model: ModelSpec
    output: OutputSpec
    max_frames: Optional[int] = None


@dataclass
class _Tracker:
    """Seconds per named part of the job, and the part running now (for the interrupt message)."""

    seconds: Dict[str, float] = field(default_factory=dict)
    stage: str = "checks"
    plan: List[str] = field(default_factory=list)  # the run's stages in order

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.stage = name.replace("_", " ")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def step(self, event: StepEvent) -> None:
        """The stage running after this step: its own, or the next planned one once it has finished."""
        stage = event.stage
        if event.i >= event.total and stage in self.plan:
            later = self.plan[self.plan.index(stage) + 1:]
            stage = later[0] if later else "decoding"
        self.stage = STAGE_LABELS.get(stage, stage)


@contextmanager
def _interruptible(tracker: _Tracker, outputs: OutputSet) -> Iterator[None]:
    """Whatever stops the job, the staging folder goes and the output folder stays as it was."""
    try:
        yield
    except KeyboardInterrupt:
        outputs.discard()
        raise Interrupted(tracker.stage) from None
    except BaseException:
        outputs.discard()
        raise


@contextmanager
def _progress(total: int, quiet: bool, tracker: _Tracker) -> Iterator[Callable[[StepEvent], None]]:
    """One bar across all stages; the stage name rides in the description."""
    if quiet:
        def silent(event: StepEvent) -> None:
            tracker.step(event)

        yield silent
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="step", dynamic_ncols=True) as bar:
        def update(event: StepEvent) -> None:
            tracker.step(event)
            bar.set_description(event.stage)
            bar.update(1)

        yield update


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


@dataclass
class LoadedModels:
    """A backbone and ranker loaded once and shared by many runs (``i4vgen batch``): ``generate(job, models)``."""

    backbone: object
    ranker: object = None
    ranker_label: str = "not used"


# How many times this process loaded a model / a ranker: ``i4vgen batch`` records them to show it loads once.
LOAD_COUNTS: Dict[str, int] = {"model": 0, "ranker": 0}


def check_generate_job(job: GenerateJob):
    """Every check of a generate job that needs no model; returns its EVS settings and decoded anchor image."""
    settings, spec = job.settings, job.model
    evs = settings.evs() if settings.runs_evs else None
    if evs is not None:
        evs.plan(settings.steps)
    _check_device(spec.device)
    if spec.backbone == "i2vgen-xl" and job.anchor_image is None:
        raise SettingsError("anchor_image", None, "an image file: the i2vgen-xl backbone animates a given image")
    if spec.backbone == "i2vgen-xl" and settings.mode != "i4vgen":
        raise SettingsError("mode", settings.mode, "i4vgen with the i2vgen-xl backbone")
    if job.anchor_image is not None and not settings.runs_i4vgen:
        raise SettingsError("anchor_image", str(job.anchor_image), f"no anchor image with mode {settings.mode}")
    anchor_image = load_anchor_image(job.anchor_image) if job.anchor_image is not None else None
    return evs, anchor_image


def generate(job: GenerateJob, models: Optional[LoadedModels] = None,
             announce: Callable[[str], None] = print) -> Path:
    """One run into ``job.output.out``. ``models``: already loaded (a batch); otherwise this run loads its own.
    ``announce`` receives the one-line messages (demo model, what was written)."""
    settings, output = job.settings, job.output
    # 1. Check every input before any model work.
    evs, anchor_image = check_generate_job(job)
    settings = settings.replace(seed=settings.seed if settings.seed >= 0 else random.randrange(2**32))
    tracker = _Tracker()
    outputs = OutputSet(output.out)
    with _interruptible(tracker, outputs):
        return _generate(job, settings, evs, anchor_image, tracker, outputs, models, announce)


def needs_ranker(settings: I4VGenSettings, anchor_image_given: bool) -> bool:
    return settings.runs_i4vgen and not anchor_image_given


def load_models(spec: ModelSpec, ranker_settings: Optional[I4VGenSettings]) -> LoadedModels:
    """The ranker (first: missing weights should fail fast) when ``ranker_settings`` rank, then the model."""
    ranker, label = _load_ranker(ranker_settings, spec.device) if ranker_settings is not None else (None, "not used")
    return LoadedModels(backbone=_load_backbone(spec), ranker=ranker, ranker_label=label)


def _shared_ranker(settings: I4VGenSettings, models: LoadedModels):
    """The loaded ranker as this run's settings use it (a manual anchor or ranker 'none' scores nothing)."""
    if settings.anchor_index >= 0:
        return None, "manual"
    if settings.ranker == "none":
        return None, "none"
    return models.ranker, models.ranker_label


def _generate(job: GenerateJob, settings: I4VGenSettings, evs, anchor_image, tracker: _Tracker,
              outputs: OutputSet, models: Optional[LoadedModels], announce: Callable[[str], None]) -> Path:
    spec, output, seed = job.model, job.output, settings.seed
    # 2. Load the ranker (first: missing weights should fail fast), unless nothing is ranked, then the model.
    ranked = needs_ranker(settings, anchor_image is not None)
    if models is None:
        with tracker("load_ranker"):
            ranker, ranker_label = _load_ranker(settings, spec.device) if ranked else (None, "not used")
        with tracker("load_model"):
            backbone = _load_backbone(spec)
        if backbone.description.get("demo"):
            announce(f"i4vgen: using the {backbone.description['name']}; pass --model for real videos")
    else:
        backbone = models.backbone
        ranker, ranker_label = _shared_ranker(settings, models) if ranked else (None, "not used")
    width, height = backbone.default_size
    settings = settings.replace(width=settings.width or width, height=settings.height or height)

    # 3. Noise in the contract's order, the anchor if one was given, the denoisers.
    scale = backbone.vae_scale_factor
    latent_h, latent_w = settings.height // scale, settings.width // scale
    anchor = None
    if spec.backbone == "i2vgen-xl":
        # The image conditions every call; the pipeline's own crops prepare it, and it is also the anchor.
        with tracker("encode_anchor"):
            denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps,
                                         anchor_image, width=settings.width, height=settings.height,
                                         frames=settings.frames, fps=round(output.fps), generator=seeded_generator(seed))
        anchor = denoiser.image_latent
    else:
        if anchor_image is not None:
            with tracker("encode_anchor"):
                fitted = fit_to_video(anchor_image, settings.width, settings.height)
                anchor = backbone.encode_image(fitted, sample=settings.anchor_sample, generator=seeded_generator(seed))
        denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps,
                                     image_batch_size=job.image_batch_size)
    inverter = _inverter(backbone, settings, evs)
    noises = seeded_noises(settings, latent_h, latent_w, evs=evs)

    # 4. The run.
    plan = plan_run(settings.mode, settings, anchor_given=anchor is not None, evs=evs)
    tracker.plan, tracker.stage = list(plan), STAGE_LABELS.get(next(iter(plan)), "sampling")
    motion = {"before": getattr(backbone, "motion_module_calls", 0)}
    with _progress(sum(plan.values()), output.quiet, tracker) as bar:
        def on_step(event: StepEvent) -> None:
            if event.stage == "ranking":
                motion["after_anchor"] = getattr(backbone, "motion_module_calls", 0)
                if ranker is not None and models is None:
                    ranker.unload()  # its weights are not needed by NI-VSDS and regeneration
            bar(event)

        result = run_mode(denoiser, settings, noises, evs=evs, anchor=anchor,
                          ranker=ranker, ranker_label=ranker_label,
                          decode_images=getattr(backbone, "decode_images", None), inversion_denoiser=inverter,
                          callback=on_step)
    tracker.seconds.update(result.seconds)
    i4vgen = result.i4vgen

    # 5. Outputs, staged and moved into place together.
    with tracker("decode_video"):
        frames = backbone.decode_video(result.video)
    with tracker("write"):
        written = [write_video(frames, outputs.path(f"video.{fmt}"), fps=output.fps).name for fmt in output.formats]
        if i4vgen is not None and i4vgen.candidate_images:
            sheet = candidates_sheet(i4vgen.candidate_images, i4vgen.scores, i4vgen.anchor_index,
                                     title=_demo_label(backbone))
            sheet.save(outputs.path("candidates.png"))
            written.append("candidates.png")
        if output.save_latents:
            save_latents(outputs.path("latents.safetensors"), candidates=i4vgen.candidates if i4vgen else None,
                         nivsds=i4vgen.nivsds if i4vgen else None, final=result.video)
            written.append("latents.safetensors")
    record = {
        "mode": settings.mode,
        "settings": settings.to_dict(),
        "backbone": spec.backbone,
        "model": backbone.description,
        "seed": seed,
        "scores": result.scores,
        "anchor_index": result.anchor_index,
        "anchor_image": str(job.anchor_image) if job.anchor_image else None,
        "ranker": result.ranker or "not used",
        "timesteps": _timesteps_record(result),
        "unet_calls": result.unet_calls,
        "progress_steps": result.plan,
        "progress_reported": result.reported,
        "motion_module_calls_in_anchor_stage": (motion.get("after_anchor", motion["before"]) - motion["before"]),
        **({"evs": {"settings": evs.to_dict(), "timesteps": result.evs.timesteps}} if evs is not None else {}),
        "seconds": {k: round(v, 4) for k, v in tracker.seconds.items()},
        "output": {"files": written + ["run.json"], "fps": output.fps, "frames": len(frames),
                   "device": spec.device, "dtype": spec.dtype},
    }
    outputs.commit(record)
    announce(f"i4vgen: wrote {', '.join(written)} and run.json to {output.out} "
             f"({_anchor_summary(result)}{result.unet_calls['total']} UNet calls)")
    return output.out


def _timesteps_record(result) -> Dict[str, List[int]]:
    if result.i4vgen is None:
        return {"plain": result.timesteps["plain"]}
    return {"nivsds": result.timesteps["nivsds"], "regeneration": result.timesteps["regeneration"]}


def _anchor_summary(result) -> str:
    if result.anchor_index is None:
        return ""
    if result.anchor_index < 0:
        return "anchor from your image, "
    return f"anchor {result.anchor_index}, "


def _demo_label(backbone) -> Optional[str]:
    if backbone.description.get("demo"):
        return f"{backbone.description['name']} (random weights): not a real model"
    return None


def refine(job: RefineJob) -> Path:
    """EVS refinement of an existing video file."""
    from .video_input import fit_frames, read_video_frames, video_size

    # 1. Check inputs.
    settings, spec, output = job.settings, job.model, job.output
    evs = settings.evs()
    _check_device(spec.device)
    if job.max_frames is not None and job.max_frames < 1:
        raise SettingsError("frames", job.max_frames, "an integer >= 1 (at most this many input frames)")
    frames_in = read_video_frames(job.video, max_frames=job.max_frames)
    width, height = video_size(frames_in, settings.width, settings.height)
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    settings = settings.replace(seed=seed, width=width, height=height, frames=len(frames_in), ranker="none")
    evs.plan(settings.steps)
    tracker = _Tracker()
    outputs = OutputSet(output.out)
    with _interruptible(tracker, outputs):
        # 2. Load, encode the frames.
        with tracker("load_model"):
            backbone = _load_backbone(spec)
        with tracker("encode_video"):
            latents = [backbone.encode_image(f) for f in fit_frames(frames_in, width, height)]
            video = torch.stack(latents, dim=1)[None]
        denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps)

        # 3. EVS.
        generator = seeded_generator(seed)
        steps = evs.progress_steps(settings.steps)
        tracker.plan = list(steps)
        with _progress(sum(steps.values()), output.quiet, tracker) as bar, tracker("evs"):
            from ..core.evs import evs_refine

            noises = draw_evs_noises(generator, tuple(video.shape), fresh_bridge_noise=evs.fresh_bridge_noise)
            refined = evs_refine(denoiser, video, noises, evs, inversion_denoiser=_inverter(backbone, settings, evs),
                                 callback=bar)

        # 4. Outputs.
        with tracker("decode_video"):
            frames = backbone.decode_video(refined.latents)
        written = [write_video(frames, outputs.path(f"video.{fmt}"), fps=output.fps).name for fmt in output.formats]
        if output.save_latents:
            save_latents(outputs.path("latents.safetensors"), input=video, final=refined.latents)
            written.append("latents.safetensors")
        calls = {f"evs_{k}": v for k, v in refined.unet_calls.items() if k != "total"}
        outputs.commit({
            "mode": "evs",
            "input": {"video": str(job.video), "frames": len(frames_in), "size": list(frames_in[0].size)},
            "settings": settings.to_dict(),
            "evs": {"settings": evs.to_dict(), "timesteps": refined.timesteps},
            "model": backbone.description,
            "seed": seed,
            "unet_calls": {**calls, "total": refined.unet_calls["total"]},
            "progress_steps": steps,
            "seconds": {k: round(v, 4) for k, v in tracker.seconds.items()},
            "output": {"files": written + ["run.json"], "fps": output.fps, "frames": len(frames),
                       "device": spec.device, "dtype": spec.dtype},
        })
    print(f"i4vgen: wrote {', '.join(written)} and run.json to {output.out} ({refined.unet_calls['total']} UNet calls)")
    return output.out


def _inverter(backbone, settings: I4VGenSettings, evs):
    """EVS's inversion runs without CFG (guidance 1), as DDIM inversion usually is; EVS does not say."""
    if evs is None or not evs.inversion:
        return None
    return backbone.denoiser(settings.prompt, settings.negative_prompt, 1.0, settings.steps)


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", "cuda", "cpu (no CUDA device is visible)")


def _load_backbone(spec: ModelSpec):
    backbone = _load_backbone_files(spec)
    LOAD_COUNTS["model"] += 1
    if backbone.description.get("demo") and spec.device == "cpu":
        torch.set_num_threads(1)  # tiny layers: more threads only add synchronisation (5x slower on 2 busy cores)
    return backbone


def _load_backbone_files(spec: ModelSpec):
    dtype = getattr(torch, spec.dtype)
    _quiet_library_progress()
    try:
        if spec.backbone == "i2vgen-xl":
            from ..backbones.i2vgen_xl import I2VGenXLBackbone

            if not spec.model:
                raise SettingsError("model", None, "an I2VGen-XL diffusers folder (or hub id when online)")
            return I2VGenXLBackbone.load(spec.model, device=spec.device, dtype=dtype)
        from ..backbones.diffusers_backbone import DiffusersBackbone
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("diffusers", "transformers", "accelerate"):
            raise ModuleNotFoundError(
                f"the CLI needs the standalone stack ({error.name} is not installed): "
                'pip install "i4vgen[standalone]"', name=error.name) from None
        raise
    return DiffusersBackbone.load(spec.model, spec.motion_module, loras=list(spec.loras), device=spec.device,
                                  dtype=dtype, single_file_config=spec.single_file_config,
                                  trust_pickle=spec.trust_pickle)


def _quiet_library_progress() -> None:
    """Our own bar is the progress display; the libraries' loading bars would interleave with it."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _load_ranker(settings: I4VGenSettings, device: str):
    if settings.anchor_index >= 0:
        return None, "manual"
    if settings.ranker == "none":
        return None, "none"
    from ..rankers import load_ranker_with_fallback

    LOAD_COUNTS["ranker"] += 1
    ranker, label = load_ranker_with_fallback(
        settings.ranker, settings.ranker_path or None, fallback=settings.ranker_fallback, device=device,
        dtype=torch.float16 if device == "cuda" else None, offline=_offline(),
    )
    if getattr(ranker, "name", None) == "none":
        return None, label
    return ranker, label

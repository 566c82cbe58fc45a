"""The CLI's jobs, each reading top to bottom: check inputs, load, run the stages, write every output."""
from __future__ import annotations

import argparse
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch

from .core.anchor_image import fit_to_video, load_anchor_image
from .core.denoiser import StepEvent
from .core.noise import draw_noises, seeded_generator
from .outputs import candidates_sheet, save_latents, write_run_json, write_video
from .core.pipeline import progress_plan, run_i4vgen
from .core.settings import I4VGenSettings, SettingsError
from .core.stages import plain_video


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[StepEvent], None]]:
    """One bar across all stages; the stage name rides in the description."""
    if quiet:
        yield lambda event: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="step", dynamic_ncols=True) as bar:
        def update(event: StepEvent) -> None:
            bar.set_description(event.stage)
            bar.update(1)

        yield update


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


class _Timer:
    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def generate(args: argparse.Namespace) -> Path:
    from .cli import evs_settings_from_args, parse_formats, parse_loras, settings_from_args

    # 1. Check every input before any model work.
    if args.backbone == "i2vgen-xl":
        from .backbones.i2vgen_xl import DEFAULTS as I2V_DEFAULTS  # unset flags take I2VGen-XL's own defaults

        args.steps = args.steps or I2V_DEFAULTS["steps"]
        args.guidance = I2V_DEFAULTS["guidance"] if args.guidance is None else args.guidance
    settings = settings_from_args(args)
    formats = parse_formats(args.format)
    loras = parse_loras(args.lora)
    evs = evs_settings_from_args(args) if args.mode.endswith("+evs") else None
    if evs is not None:
        evs.plan(settings.steps)
    _check_common(args)
    if args.backbone == "i2vgen-xl" and args.anchor_image is None:
        raise SettingsError("anchor_image", None, "an image file: the i2vgen-xl backbone animates a given image")
    if args.backbone == "i2vgen-xl" and args.mode != "i4vgen":
        raise SettingsError("mode", args.mode, "i4vgen with the i2vgen-xl backbone")
    if args.anchor_image is not None and args.mode.startswith("plain"):
        raise SettingsError("anchor_image", str(args.anchor_image), "no anchor image with --mode plain")
    anchor_image = load_anchor_image(args.anchor_image) if args.anchor_image is not None else None
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    settings = settings.replace(seed=seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()

    # 2. Load the ranker (first: missing weights should fail fast), unless nothing is ranked, then the model.
    ranked = args.mode.startswith("i4vgen") and anchor_image is None
    with timer("load_ranker"):
        ranker, ranker_label = _load_ranker(settings, args.device) if ranked else (None, "not used")
    with timer("load_model"):
        backbone = _load_backbone(args, loras)
    width, height = backbone.default_size
    settings = settings.replace(width=settings.width or width, height=settings.height or height)
    if backbone.description.get("demo"):
        print(f"i4vgen: using the {backbone.description['name']}; pass --model for real videos")
        if args.device == "cpu":
            torch.set_num_threads(1)  # tiny layers: more threads only add synchronisation (5x slower on 2 busy cores)

    # 3. Noise in the contract's order, the anchor if one was given, the denoiser.
    scale = backbone.vae_scale_factor
    generator = seeded_generator(seed)
    noises = draw_noises(generator, frames=settings.frames, candidates=settings.candidates,
                         latent_height=settings.height // scale, latent_width=settings.width // scale)
    anchor = None
    if args.backbone == "i2vgen-xl":
        # The image conditions every call; the pipeline's own crops prepare it, and it is also the anchor.
        with timer("encode_anchor"):
            denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps,
                                         anchor_image, width=settings.width, height=settings.height,
                                         frames=settings.frames, fps=round(args.fps), generator=seeded_generator(seed))
        anchor = denoiser.image_latent
    else:
        if anchor_image is not None:
            with timer("encode_anchor"):
                fitted = fit_to_video(anchor_image, settings.width, settings.height)
                anchor = backbone.encode_image(fitted, sample=args.anchor_sample, generator=seeded_generator(seed))
        denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps,
                                     image_batch_size=args.image_batch_size)

    # 4. The stages.
    evs_record: Dict = {}
    if args.mode.startswith("plain"):
        plan = {"plain": settings.steps}
    else:
        plan = progress_plan(settings, with_anchor_stage=anchor is None)
    if evs is not None:
        evs_plan = evs.plan(settings.steps)
        plan["evs"] = evs_plan["image_steps"] + evs_plan["video_steps"]
    motion = {"before": getattr(backbone, "motion_module_calls", 0)}
    with _progress(sum(plan.values()), args.quiet) as bar:
        def on_step(event: StepEvent) -> None:
            if event.stage == "ranking":
                motion["after_anchor"] = getattr(backbone, "motion_module_calls", 0)
                if ranker is not None:
                    ranker.unload()  # its weights are not needed by NI-VSDS and regeneration
            bar(event)

        if args.mode.startswith("plain"):
            # Plain AnimateDiff starts from the first (1, 4, F, h, w) draw of the seed, as diffusers' pipeline does.
            first = torch.randn((1, 4, settings.frames, settings.height // scale, settings.width // scale),
                                generator=seeded_generator(seed))
            with timer("plain"):
                stage = plain_video(denoiser, first, callback=on_step)
            video, result = stage.latents, None
            unet_calls = {"plain": stage.unet_calls}
        else:
            result = run_i4vgen(denoiser, settings, noises, ranker=ranker, ranker_label=ranker_label,
                                decode_images=getattr(backbone, "decode_images", None), anchor=anchor,
                                callback=on_step)
            video, unet_calls = result.video, dict(result.unet_calls)
            timer.seconds.update(result.seconds)
        if evs is not None:
            refined = _run_evs(backbone, denoiser, settings, evs, video, generator, on_step, timer)
            unet_calls["evs"] = refined.unet_calls
            unet_calls["total"] = unet_calls.get("total", unet_calls.get("plain", 0)) + refined.unet_calls["total"]
            evs_record["evs"] = {"settings": evs.to_dict(), "timesteps": refined.timesteps}
            video = refined.latents
    unet_calls.setdefault("total", sum(v for v in unet_calls.values() if isinstance(v, int)))

    # 5. Outputs.
    with timer("decode_video"):
        frames = backbone.decode_video(video)
    with timer("write"):
        written = [write_video(frames, out / f"video.{fmt}", fps=args.fps).name for fmt in formats]
        if result is not None and result.candidate_images:
            candidates_sheet(result.candidate_images, result.scores, result.anchor_index).save(out / "candidates.png")
            written.append("candidates.png")
        if args.save_latents:
            save_latents(out / "latents.safetensors", candidates=result.candidates if result else None,
                         nivsds=result.nivsds if result else None, final=video)
            written.append("latents.safetensors")
    record = {
        "mode": args.mode,
        "settings": settings.to_dict(),
        "backbone": args.backbone,
        "model": backbone.description,
        "seed": seed,
        "scores": result.scores if result else None,
        "anchor_index": result.anchor_index if result else None,
        "anchor_image": str(args.anchor_image) if args.anchor_image else None,
        "ranker": result.ranker if result else "not used",
        "timesteps": ({"nivsds": result.timesteps["nivsds"], "regeneration": result.timesteps["regeneration"]}
                      if result else {"plain": list(denoiser.timesteps)}),
        "unet_calls": unet_calls,
        "motion_module_calls_in_anchor_stage": (motion.get("after_anchor", motion["before"]) - motion["before"]),
        **evs_record,
        "seconds": {k: round(v, 4) for k, v in timer.seconds.items()},
        "output": {"files": written + ["run.json"], "fps": args.fps, "frames": len(frames),
                   "device": args.device, "dtype": args.dtype},
    }
    write_run_json(out / "run.json", record)
    summary = f"anchor {result.anchor_index}, " if result else ""
    print(f"i4vgen: wrote {', '.join(written)} and run.json to {out} ({summary}{unet_calls['total']} UNet calls)")
    return out


def refine(args: argparse.Namespace) -> Path:
    """EVS refinement of an existing video file."""
    from .cli import evs_settings_from_args, parse_formats, parse_loras
    from .video_input import fit_frames, read_video_frames, video_size

    # 1. Check inputs.
    evs = evs_settings_from_args(args)
    formats = parse_formats(args.format)
    loras = parse_loras(args.lora)
    _check_common(args)
    frames_in = read_video_frames(args.video, max_frames=args.frames)
    width, height = video_size(frames_in, args.width, args.height)
    seed = args.seed if args.seed is not None and args.seed >= 0 else random.randrange(2**32)
    settings = I4VGenSettings.from_preset("official", prompt=args.prompt, negative_prompt=args.negative_prompt,
                                          seed=seed, steps=args.steps, guidance=args.guidance, width=width,
                                          height=height, frames=len(frames_in), ranker="none")
    evs.plan(settings.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()

    # 2. Load, encode the frames.
    with timer("load_model"):
        args.backbone = "animatediff"
        backbone = _load_backbone(args, loras)
    with timer("encode_video"):
        latents = [backbone.encode_image(f) for f in fit_frames(frames_in, width, height)]
        video = torch.stack(latents, dim=1)[None]
    denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps)

    # 3. EVS.
    plan = evs.plan(settings.steps)
    with _progress(plan["image_steps"] + plan["video_steps"], args.quiet) as bar:
        refined = _run_evs(backbone, denoiser, settings, evs, video, seeded_generator(seed), bar, timer)

    # 4. Outputs.
    with timer("decode_video"):
        frames = backbone.decode_video(refined.latents)
    written = [write_video(frames, out / f"video.{fmt}", fps=args.fps).name for fmt in formats]
    if args.save_latents:
        save_latents(out / "latents.safetensors", input=video, final=refined.latents)
        written.append("latents.safetensors")
    write_run_json(out / "run.json", {
        "mode": "evs",
        "input": {"video": str(args.video), "frames": len(frames_in), "size": list(frames_in[0].size)},
        "settings": settings.to_dict(),
        "evs": {"settings": evs.to_dict(), "timesteps": refined.timesteps},
        "model": backbone.description,
        "seed": seed,
        "unet_calls": {"evs": refined.unet_calls, "total": refined.unet_calls["total"]},
        "seconds": {k: round(v, 4) for k, v in timer.seconds.items()},
        "output": {"files": written + ["run.json"], "fps": args.fps, "frames": len(frames),
                   "device": args.device, "dtype": args.dtype},
    })
    print(f"i4vgen: wrote {', '.join(written)} and run.json to {out} ({refined.unet_calls['total']} UNet calls)")
    return out


def _run_evs(backbone, denoiser, settings, evs, video, generator, callback, timer):
    from .core.evs import draw_evs_noises, evs_refine

    noises = draw_evs_noises(generator, tuple(video.shape), fresh_bridge_noise=evs.fresh_bridge_noise)
    inverter = backbone.denoiser(settings.prompt, settings.negative_prompt, 1.0, settings.steps) if evs.inversion else None
    with timer("evs"):
        return evs_refine(denoiser, video, noises, evs, inversion_denoiser=inverter, callback=callback)


def _check_common(args: argparse.Namespace) -> None:
    if args.fps <= 0:
        raise SettingsError("fps", args.fps, "a number > 0")
    if getattr(args, "image_batch_size", None) is not None and args.image_batch_size < 1:
        raise SettingsError("image_batch_size", args.image_batch_size, "an integer >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", "cuda", "cpu (no CUDA device is visible)")


def _load_backbone(args: argparse.Namespace, loras):
    dtype = getattr(torch, args.dtype)
    _quiet_library_progress()
    if args.backbone == "i2vgen-xl":
        from .backbones.i2vgen_xl import I2VGenXLBackbone

        if not args.model:
            raise SettingsError("model", None, "an I2VGen-XL diffusers folder (or hub id when online)")
        return I2VGenXLBackbone.load(args.model, device=args.device, dtype=dtype)
    from .backbones.diffusers_backbone import DiffusersBackbone

    return DiffusersBackbone.load(args.model, args.motion_module, loras=loras, device=args.device, dtype=dtype,
                                  single_file_config=args.single_file_config, trust_pickle=args.trust_pickle)


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
    from .rankers import load_ranker_with_fallback

    ranker, label = load_ranker_with_fallback(
        settings.ranker, settings.ranker_path or None, fallback=settings.ranker_fallback, device=device,
        dtype=torch.float16 if device == "cuda" else None, offline=_offline(),
    )
    if getattr(ranker, "name", None) == "none":
        return None, label
    return ranker, label

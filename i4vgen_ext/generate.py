"""The CLI's ``generate`` job: validate, load, run I4VGen, write every output. Reads top to bottom."""
from __future__ import annotations

import argparse
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

import torch

from .anchor_image import fit_to_video, load_anchor_image
from .denoiser import StepEvent
from .noise import draw_noises, seeded_generator
from .outputs import candidates_sheet, save_latents, write_run_json, write_video
from .pipeline import progress_plan, run_i4vgen
from .settings import I4VGenSettings, SettingsError


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator:
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


def generate(args: argparse.Namespace) -> Path:
    from .cli import parse_formats, parse_loras, settings_from_args

    # 1. Check every input before any model work.
    settings = settings_from_args(args)
    formats = parse_formats(args.format)
    loras = parse_loras(args.lora)
    if args.fps <= 0:
        raise SettingsError("fps", args.fps, "a number > 0")
    if args.backbone == "i2vgen-xl" and args.anchor_image is None:
        raise SettingsError("anchor_image", None, "an image file: the i2vgen-xl backbone animates a given image")
    anchor_image = load_anchor_image(args.anchor_image) if args.anchor_image is not None else None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", "cuda", "cpu (no CUDA device is visible)")
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    settings = settings.replace(seed=seed)
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: Dict[str, float] = {}

    # 2. Load the model.
    started = time.perf_counter()
    backbone = _load_backbone(args, loras, dtype)
    width, height = backbone.default_size
    settings = settings.replace(width=settings.width or width, height=settings.height or height)
    seconds["load_model"] = time.perf_counter() - started
    if backbone.description.get("demo"):
        print(f"i4vgen: using {backbone.description['name']}: pass --model for real videos")

    # 3. The ranker (not needed with a manual anchor or a given anchor image).
    started = time.perf_counter()
    ranker, ranker_label = _load_ranker(settings, args.device, anchor_image is not None)
    seconds["load_ranker"] = time.perf_counter() - started

    # 4. Noise, in the contract's order, then the four stages.
    scale = backbone.vae_scale_factor
    noises = draw_noises(seeded_generator(seed), frames=settings.frames, candidates=settings.candidates,
                         latent_height=settings.height // scale, latent_width=settings.width // scale)
    anchor = None
    if anchor_image is not None:
        started = time.perf_counter()
        fitted = fit_to_video(anchor_image, settings.width, settings.height)
        anchor = backbone.encode_image(fitted, sample=args.anchor_sample, generator=seeded_generator(seed))
        seconds["encode_anchor"] = time.perf_counter() - started
    denoiser_kwargs = {"image": anchor_image} if args.backbone == "i2vgen-xl" else {}
    denoiser = backbone.denoiser(settings.prompt, settings.negative_prompt, settings.guidance, settings.steps,
                                 **denoiser_kwargs)
    motion_calls_after_anchor = {}

    plan = progress_plan(settings, with_anchor_stage=anchor is None)
    with _progress(sum(plan.values()), args.quiet) as bar:
        def on_step(event: StepEvent) -> None:
            if event.stage == "ranking":
                motion_calls_after_anchor["count"] = getattr(backbone, "motion_module_calls", 0)
            bar(event)

        motion_before = getattr(backbone, "motion_module_calls", 0)
        result = run_i4vgen(denoiser, settings, noises, ranker=ranker, ranker_label=ranker_label,
                            decode_images=getattr(backbone, "decode_images", None), anchor=anchor, callback=on_step)
    if ranker is not None:
        ranker.unload()
    seconds.update(result.seconds)

    # 5. Outputs.
    started = time.perf_counter()
    frames = backbone.decode_video(result.video)
    seconds["decode_video"] = time.perf_counter() - started
    started = time.perf_counter()
    written = [str(write_video(frames, out / f"video.{fmt}", fps=args.fps).name) for fmt in formats]
    if result.candidate_images:
        candidates_sheet(result.candidate_images, result.scores, result.anchor_index).save(out / "candidates.png")
        written.append("candidates.png")
    if args.save_latents:
        save_latents(out / "latents.safetensors", candidates=result.candidates, nivsds=result.nivsds,
                     final=result.video)
        written.append("latents.safetensors")
    seconds["write"] = time.perf_counter() - started
    record = {
        "settings": settings.to_dict(),
        "backbone": args.backbone,
        "model": backbone.description,
        "seed": seed,
        "scores": result.scores,
        "anchor_index": result.anchor_index,
        "anchor_image": str(args.anchor_image) if args.anchor_image else None,
        "ranker": result.ranker,
        "timesteps": {"nivsds": result.timesteps["nivsds"], "regeneration": result.timesteps["regeneration"]},
        "unet_calls": result.unet_calls,
        "motion_module_calls_in_anchor_stage": (
            motion_calls_after_anchor.get("count", motion_before) - motion_before if anchor is None else 0
        ),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "output": {"files": written + ["run.json"], "fps": args.fps, "frames": len(frames),
                   "device": args.device, "dtype": args.dtype},
    }
    write_run_json(out / "run.json", record)
    print(f"i4vgen: wrote {', '.join(written)} and run.json to {out} "
          f"(anchor {result.anchor_index}, {result.unet_calls['total']} UNet calls)")
    return out


def _load_backbone(args: argparse.Namespace, loras, dtype):
    if args.backbone == "i2vgen-xl":
        from .backbones.i2vgen_xl import I2VGenXLBackbone

        if not args.model:
            raise SettingsError("model", None, "an I2VGen-XL diffusers folder (or hub id when online)")
        return I2VGenXLBackbone.load(args.model, device=args.device, dtype=dtype)
    from .backbones.diffusers_backbone import DiffusersBackbone

    return DiffusersBackbone.load(args.model, args.motion_module, loras=loras, device=args.device, dtype=dtype)


def _load_ranker(settings: I4VGenSettings, device: str, anchor_given: bool):
    if anchor_given:
        return None, "anchor image"
    if settings.anchor_index >= 0:
        return None, "manual"
    if settings.ranker == "none":
        return None, "none"
    from .rankers import load_ranker_with_fallback

    ranker, label = load_ranker_with_fallback(
        settings.ranker, settings.ranker_path or None, fallback=settings.ranker_fallback, device=device,
        offline=_offline(),
    )
    if getattr(ranker, "name", None) == "none":
        return None, label
    return ranker, label

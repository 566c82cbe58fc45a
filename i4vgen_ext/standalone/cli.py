"""``i4vgen`` command line: flags generated from ``core.settings.FIELDS``, one line per fault, exit codes 0/2/130.

The leaf of the package: it parses, builds the typed jobs of ``generate.py`` and reports; nothing imports it."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ..core.settings import FIELD_BY_NAME, FIELDS, IMAGE, SEED_MAX, I4VGenSettings
from ..errors import I4VGenError, Interrupted, SettingsError, cli_line
from .outputs import VIDEO_FORMATS

DTYPES = ("float32", "float16", "bfloat16")
FPS_MAX = 240.0
# Flags that keep their own spelling, default or meaning on the command line.
_CLI_DEFAULTS = {"seed": -1, "mode": "i4vgen", "preset": "official"}
_CLI_HELP_DEFAULTS = {"ranker": " Default: imagereward.", "ranker_fallback": " Default: error."}


def _help(name: str) -> str:
    spec = FIELD_BY_NAME[name]
    return f"{spec.help} Allowed: {spec.allowed()}.{_CLI_HELP_DEFAULTS.get(name, '')}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(parser: Any, name: str, **overrides: Any) -> None:
    """One settings field as a flag: its type, choices and help from the table; unset flags stay None so that the
    preset and the table's defaults apply."""
    spec = FIELD_BY_NAME[name]
    kwargs: dict = dict(help=_help(name), default=_CLI_DEFAULTS.get(name))
    if spec.kind is bool:
        kwargs.update(action=argparse.BooleanOptionalAction if spec.default else "store_true")
        if not spec.default:
            kwargs["default"] = False
    elif spec.kind is IMAGE:
        kwargs.update(type=Path, metavar="FILE")
    else:
        kwargs.update(type=spec.kind, choices=spec.choices or None)
    kwargs.update(overrides)
    parser.add_argument(_flag(name), **kwargs)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="diffusers folder (AnimateDiff pipeline or SD1.5) or an A1111 single-file "
                                        "checkpoint (.safetensors/.ckpt). Default: the embedded tiny DEMO model.")
    parser.add_argument("--motion-module",
                        help="AnimateDiff motion module: a MotionAdapter folder or mm_*.ckpt/.safetensors.")
    parser.add_argument("--single-file-config",
                        help="A diffusers SD folder whose configs describe a single-file checkpoint of another "
                             "architecture.")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="Allow a .ckpt that pickles more than tensors (runs code from the file: trusted files "
                             "only).")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                        help="LoRA file (A1111/kohya or diffusers format), applied to image and video model. "
                             "Repeatable.")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="Output folder. A run replaces the previous run's outputs there (other files stay); "
                             "nothing is written unless the run completes.")
    parser.add_argument("--format", default="gif", help=f"Comma-separated video formats from {', '.join(VIDEO_FORMATS)}.")
    parser.add_argument("--fps", type=float, default=8.0,
                        help=f"Frames per second of the written video, in (0, {FPS_MAX:g}] (default 8).")
    parser.add_argument("--save-latents", action="store_true", help="Also write latents.safetensors.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Compute device.")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="Model dtype (latents stay float32).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")


def _add_evs_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("EVS refinement (our defaults; the EVS authors' code is not public)")
    for spec in FIELDS:
        if spec.group == "evs":
            _add_field(group, spec.name)
    group.add_argument("--evs-reuse-bridge-noise", dest="evs_fresh_bridge_noise", action="store_false",
                       help="Same as --no-evs-fresh-bridge-noise.")


def add_generate_settings(parser: argparse.ArgumentParser, **field_overrides: Dict[str, Any]) -> None:
    """generate's settings and model flags, except --prompt and the output flags (``i4vgen batch`` shares them)."""
    for spec in FIELDS:
        if spec.group in ("generation", "method", "mode", "anchor") and spec.name != "prompt":
            _add_field(parser, spec.name, **field_overrides.get(spec.name, {}))
    parser.add_argument("--backbone", default="animatediff", choices=("animatediff", "i2vgen-xl"),
                        help="Video model family: AnimateDiff (SD1.5 + motion module) or I2VGen-XL (needs "
                             "--anchor-image).")
    _add_model_arguments(parser)
    parser.add_argument("--image-batch-size", type=int, default=None,
                        help="Memory budget: at most this many candidates per image-mode UNet call (default: all N; "
                             "each chunk is one more UNet call per step).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i4vgen", description="I4VGen text-to-video on AnimateDiff (diffusers).")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="Generate a video with I4VGen.")
    _add_field(g, "prompt", required=True)
    add_generate_settings(g)
    _add_output_arguments(g)
    _add_evs_arguments(g)

    r = sub.add_parser("refine", help="Refine an existing video with EVS (T2I + [T2V] + T2I).")
    r.add_argument("--video", required=True, type=Path, help="GIF/WebP/MP4 file or a folder of frames.")
    _add_field(r, "prompt", required=True)
    for name in ("negative_prompt", "seed", "steps", "guidance", "width", "height"):
        _add_field(r, name)
    r.add_argument("--frames", type=int, help="Use at most this many frames of the input (>= 1).")
    _add_model_arguments(r)
    _add_output_arguments(r)
    _add_evs_arguments(r)
    _add_batch_parser(sub)
    return parser


def _add_batch_parser(sub: Any) -> None:
    b = sub.add_parser("batch", help="Generate a whole prompt suite into one folder (resumable, several GPUs).",
                       description="Every prompt of FILE, --samples-per-prompt times, as {prompt}-{index}.mp4 in DIR "
                                   "plus one batch.jsonl line each; a rerun resumes. Several GPUs: accelerate launch "
                                   "--num_processes N -m i4vgen_ext batch ... (docs/batch.md).")
    b.add_argument("--prompts", required=True, type=Path, metavar="FILE",
                   help="One prompt a line, or (a .jsonl file) one JSON object a line: prompt, and optionally "
                        "negative_prompt, seed, name and generate's settings for that line.")
    b.add_argument("--out", required=True, type=Path, metavar="DIR", help="The flat output folder.")
    b.add_argument("--samples-per-prompt", type=int, default=1, metavar="N",
                   help="Videos per prompt, {prompt}-0 .. {prompt}-(N-1) (VBench asks for 5). Default 1.")
    add_generate_settings(b, seed=dict(
        default=0, help="Base seed: sample k of the p-th prompt (from 0) gets seed + p * N + k (mod 2^32); a line's "
                        f"own seed s gives s + k. Allowed: an integer in [0, {SEED_MAX}]. Default 0."))
    b.add_argument("--format", default="mp4", choices=VIDEO_FORMATS, help="Video format of every sample (mp4).")
    b.add_argument("--fps", type=float, default=8.0, help=f"Frames per second, in (0, {FPS_MAX:g}] (default 8).")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: each process on its own GPU (cuda:<local rank>) if there is one, else the CPU.")
    b.add_argument("--dtype", default="float32", choices=DTYPES, help="Model dtype (latents stay float32).")
    b.add_argument("--quiet", action="store_true", help="No progress bar, no line per sample.")
    _add_evs_arguments(b)


def parse_formats(text: str) -> Tuple[str, ...]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in VIDEO_FORMATS]
    if not formats or bad:
        raise SettingsError("format", text, "a comma-separated list from " + ", ".join(VIDEO_FORMATS))
    return tuple(dict.fromkeys(formats))


def parse_loras(items: Sequence[str]) -> Tuple[Tuple[str, float], ...]:
    loras = []
    for item in items:
        path, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep and head and not tail.startswith(("\\", "/")):
            try:
                path, weight = head, float(tail)
            except ValueError:
                path, weight = item, 1.0
        if not math.isfinite(weight):
            raise SettingsError("lora", item, "PATH[:WEIGHT] with a finite WEIGHT")
        if not Path(path).is_file():
            raise SettingsError("lora", item, "an existing LoRA file, optionally followed by :WEIGHT")
        loras.append((path, weight))
    return tuple(loras)


def _check_outputs(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.fps) and 0 < args.fps <= FPS_MAX):
        raise SettingsError("fps", args.fps, f"a number in (0, {FPS_MAX:g}]")
    if getattr(args, "image_batch_size", None) is not None and args.image_batch_size < 1:
        raise SettingsError("image_batch_size", args.image_batch_size, "an integer >= 1")


def _settings(args: argparse.Namespace, names: Sequence[str], preset: str = "official", **fixed: Any) -> I4VGenSettings:
    values = {name: getattr(args, name, None) for name in names}
    values.update(fixed)
    return I4VGenSettings.from_preset(preset, **values)


def _specs(args: argparse.Namespace):
    from .generate import ModelSpec, OutputSpec

    _check_outputs(args)
    model = ModelSpec(backbone=getattr(args, "backbone", "animatediff"), model=args.model,
                      motion_module=args.motion_module, single_file_config=args.single_file_config,
                      trust_pickle=args.trust_pickle, loras=parse_loras(args.lora), device=args.device,
                      dtype=args.dtype)
    output = OutputSpec(out=args.out, formats=parse_formats(args.format), fps=args.fps,
                        save_latents=args.save_latents, quiet=args.quiet)
    return model, output


def generate_job(args: argparse.Namespace):
    from .generate import GenerateJob

    model, output = _specs(args)
    names = [f.name for f in FIELDS if f.kind is not IMAGE and f.name != "preset"]
    fixed = {}
    if model.backbone == "i2vgen-xl":
        from ..backbones.i2vgen_xl import DEFAULTS as I2V_DEFAULTS  # unset flags take I2VGen-XL's own defaults

        fixed = {"steps": args.steps or I2V_DEFAULTS["steps"],
                 "guidance": I2V_DEFAULTS["guidance"] if args.guidance is None else args.guidance}
    settings = _settings(args, names, args.preset, **fixed)
    return GenerateJob(settings=settings, model=model, output=output, anchor_image=args.anchor_image,
                       image_batch_size=args.image_batch_size)


def refine_job(args: argparse.Namespace):
    from .generate import RefineJob

    model, output = _specs(args)
    names = ["prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height"] + \
        [f.name for f in FIELDS if f.group == "evs"]
    settings = _settings(args, names, ranker="none")
    return RefineJob(video=args.video, settings=settings, model=model, output=output, max_frames=args.frames)


def batch_job(args: argparse.Namespace):
    """The batch: its own flags, and each line's generate job (the command line's settings, the line's over them)."""
    from .batch import BatchJob, resolve_device

    template = argparse.Namespace(**vars(args))
    template.device = resolve_device(args.device)
    template.prompt, template.save_latents, template.quiet = None, False, True
    _specs(template)  # the command line's own flags (fps, LoRA files) fail here, not as a line's fault

    def line_job(values: Dict[str, Any]):
        line_args = argparse.Namespace(**{**vars(template), **values})
        return generate_job(line_args)

    return BatchJob(prompts=args.prompts, out=args.out, samples_per_prompt=args.samples_per_prompt,
                    base_seed=args.seed, fmt=args.format, quiet=args.quiet, make_job=line_job)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .generate import generate, refine

    try:
        if args.command == "batch":
            from .batch import run_batch

            return run_batch(batch_job(args))
        if args.command == "generate":
            generate(generate_job(args))
        else:
            refine(refine_job(args))
        return 0
    except (SettingsError, Interrupted) as err:
        print(f"i4vgen: {cli_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("i4vgen: interrupted, nothing written", file=sys.stderr)
        return Interrupted.exit_code
    except (I4VGenError, ValueError, OSError) as err:  # a model or ranker that cannot load: says what to do
        if os.environ.get("I4VGEN_DEBUG"):
            raise
        line = cli_line(err) if isinstance(err, I4VGenError) else f"error: {err}"
        print(f"i4vgen: {line}", file=sys.stderr)  # I4VGEN_DEBUG=1 shows the traceback instead
        return getattr(err, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())

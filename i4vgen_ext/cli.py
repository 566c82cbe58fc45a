"""``i4vgen`` command line: I4VGen on diffusers, writing the video, the candidates sheet and run.json."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .core.settings import FIELD_BY_NAME, PRESETS, RANKERS, FALLBACKS, I4VGenSettings, SettingsError
from .outputs import VIDEO_FORMATS
from .rankers.base import RankerLoadError

DTYPES = ("float32", "float16", "bfloat16")
MODES = ("i4vgen", "plain", "i4vgen+evs", "plain+evs")


def _help(name: str) -> str:
    spec = FIELD_BY_NAME[name]
    return f"{spec.help} Allowed: {spec.allowed()}."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i4vgen", description="I4VGen text-to-video on AnimateDiff (diffusers).")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="Generate a video with I4VGen.")
    g.add_argument("--prompt", required=True, help=_help("prompt"))
    g.add_argument("--out", required=True, type=Path, help="Output folder (created).")
    g.add_argument("--mode", default="i4vgen", choices=MODES,
                   help="i4vgen (default); plain = plain AnimateDiff; '+evs' adds EVS refinement afterwards.")
    g.add_argument("--preset", default="official", choices=tuple(PRESETS), help=_help("preset"))
    g.add_argument("--backbone", default="animatediff", choices=("animatediff", "i2vgen-xl"),
                   help="Video model family: AnimateDiff (SD1.5 + motion module) or I2VGen-XL (needs --anchor-image).")
    g.add_argument("--model", help="diffusers folder (AnimateDiff pipeline or SD1.5) or an A1111 single-file "
                                   "checkpoint (.safetensors/.ckpt). Default: the embedded tiny DEMO model.")
    g.add_argument("--motion-module", help="AnimateDiff motion module: a MotionAdapter folder or mm_*.ckpt/.safetensors.")
    g.add_argument("--single-file-config",
                   help="A diffusers SD folder whose configs describe a single-file checkpoint of another architecture.")
    g.add_argument("--trust-pickle", action="store_true",
                   help="Allow a .ckpt that pickles more than tensors (runs code from the file: trusted files only).")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="LoRA file (A1111/kohya or diffusers format), applied to image and video model. Repeatable.")
    g.add_argument("--frames", type=int, help=_help("frames"))
    g.add_argument("--candidates", type=int, help=_help("candidates"))
    g.add_argument("--steps", type=int, help=_help("steps"))
    g.add_argument("--guidance", type=float, help=_help("guidance"))
    g.add_argument("--negative-prompt", help=_help("negative_prompt"))
    g.add_argument("--width", type=int, help=_help("width"))
    g.add_argument("--height", type=int, help=_help("height"))
    g.add_argument("--seed", type=int, default=-1, help=_help("seed"))
    g.add_argument("--nivsds-fraction", type=float, help=_help("nivsds_fraction"))
    g.add_argument("--alpha-schedule", help=_help("alpha_schedule"))
    g.add_argument("--regen-strength", type=float, help=_help("regen_strength"))
    g.add_argument("--ranker", default=None, choices=RANKERS, help=_help("ranker") + " Default: imagereward.")
    g.add_argument("--ranker-path", help=_help("ranker_path"))
    g.add_argument("--ranker-fallback", choices=FALLBACKS, help=_help("ranker_fallback") + " Default: error.")
    g.add_argument("--anchor-index", type=int, help=_help("anchor_index"))
    g.add_argument("--anchor-image", type=Path,
                   help="Use this image as the anchor (skips candidates and ranking; paper section 4.5).")
    g.add_argument("--anchor-sample", action="store_true",
                   help="With --anchor-image: sample the VAE posterior instead of taking its mean.")
    g.add_argument("--format", default="gif", help=f"Comma-separated video formats from {', '.join(VIDEO_FORMATS)}.")
    g.add_argument("--fps", type=float, default=8.0, help="Frames per second of the written video (default 8).")
    g.add_argument("--save-latents", action="store_true", help="Also write latents.safetensors.")
    g.add_argument("--image-batch-size", type=int, default=None,
                   help="Memory budget: at most this many candidates per image-mode UNet call (default: all N; "
                        "each chunk is one more UNet call per step).")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Compute device.")
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="Model dtype (latents stay float32).")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    _add_evs_arguments(g)

    r = sub.add_parser("refine", help="Refine an existing video with EVS (T2I + [T2V] + T2I).")
    r.add_argument("--video", required=True, type=Path, help="GIF/WebP/MP4 file or a folder of frames.")
    r.add_argument("--prompt", required=True, help=_help("prompt"))
    r.add_argument("--out", required=True, type=Path, help="Output folder (created).")
    for flag in ("--model", "--motion-module", "--single-file-config"):
        r.add_argument(flag, help=g._option_string_actions[flag].help)
    r.add_argument("--trust-pickle", action="store_true", help=g._option_string_actions["--trust-pickle"].help)
    r.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]", help="LoRA file. Repeatable.")
    r.add_argument("--frames", type=int, help="Use at most this many frames of the input.")
    for name in ("steps", "guidance", "width", "height"):
        r.add_argument(f"--{name}", type=FIELD_BY_NAME[name].kind, help=_help(name))
    r.add_argument("--negative-prompt", help=_help("negative_prompt"))
    r.add_argument("--seed", type=int, default=-1, help=_help("seed"))
    for flag in ("--format", "--fps", "--device", "--dtype"):
        action = g._option_string_actions[flag]
        r.add_argument(flag, default=action.default, type=action.type, choices=action.choices, help=action.help)
    r.add_argument("--save-latents", action="store_true", help="Also write latents.safetensors.")
    r.add_argument("--quiet", action="store_true", help="No progress bar.")
    _add_evs_arguments(r)
    return parser


def _add_evs_arguments(parser: argparse.ArgumentParser) -> None:
    evs = parser.add_argument_group("EVS refinement (our defaults; the EVS authors' code is not public)")
    evs.add_argument("--evs-strength", type=float, default=0.4, help="s_I: SDEdit strength of the T2I pass, (0, 1].")
    evs.add_argument("--evs-t2v-step", type=int, default=-1,
                     help="T2I step (1-based) that runs the video block; -1 = the middle one; 0 = no block.")
    evs.add_argument("--evs-video-strength", type=float, default=0.3,
                     help="s_V: noise level t_V = timesteps[S - int(S*s_V)] the block starts from, (0, 1].")
    evs.add_argument("--evs-video-steps", type=int, default=-1,
                     help="n_V: video steps in the block, 0..int(S*s_V); -1 = min(4, int(S*s_V)).")
    evs.add_argument("--evs-reuse-bridge-noise", action="store_true",
                     help="Reuse the SDEdit noise for both bridges instead of fresh draws.")
    evs.add_argument("--evs-inversion", action="store_true",
                     help="Reach t_V by DDIM inversion with the video model (no CFG) instead of SDEdit noising.")
    evs.add_argument("--evs-sfi", action="store_true",
                     help="Selective Feature Injection (needs --evs-inversion): the video steps attend with the "
                          "inversion's K, V and a gamma-mix of its Q in the chosen spatial self-attention layers.")
    evs.add_argument("--evs-sfi-gamma", type=float, default=0.8,
                     help="gamma in [0, 1]: weight of the inversion's query (paper: 0.8 for deep layers, 0.5 for "
                          "shallow ones; 1 with all layers = maximal reconstruction).")
    evs.add_argument("--evs-sfi-layers", default="deep",
                     help="Layers to inject: deep (mid block + lowest-resolution blocks), shallow (highest-resolution "
                          "blocks), all, or a comma list of UNet module-name prefixes (e.g. mid_block,up_blocks.1).")


def evs_settings_from_args(args: argparse.Namespace):
    from .core.evs import EVSSettings

    return EVSSettings(strength=args.evs_strength, t2v_step=args.evs_t2v_step, video_strength=args.evs_video_strength,
                       video_steps=args.evs_video_steps, fresh_bridge_noise=not args.evs_reuse_bridge_noise,
                       inversion=args.evs_inversion, sfi=args.evs_sfi, sfi_gamma=args.evs_sfi_gamma,
                       sfi_layers=args.evs_sfi_layers)


def parse_formats(text: str) -> List[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in VIDEO_FORMATS]
    if not formats or bad:
        raise SettingsError("format", text, "a comma-separated list from " + ", ".join(VIDEO_FORMATS))
    return formats


def parse_loras(items: Sequence[str]) -> List[Tuple[str, float]]:
    loras = []
    for item in items:
        path, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep and head and not tail.startswith(("\\", "/")):
            try:
                path, weight = head, float(tail)
            except ValueError:
                path, weight = item, 1.0
        if not Path(path).is_file():
            raise SettingsError("lora", item, "an existing LoRA file, optionally followed by :WEIGHT")
        loras.append((path, weight))
    return loras


def settings_from_args(args: argparse.Namespace) -> I4VGenSettings:
    return I4VGenSettings.from_preset(
        args.preset,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        width=args.width,
        height=args.height,
        frames=args.frames,
        candidates=args.candidates,
        steps=args.steps,
        guidance=args.guidance,
        nivsds_fraction=args.nivsds_fraction,
        alpha_schedule=args.alpha_schedule,
        regen_strength=args.regen_strength,
        ranker=args.ranker,
        ranker_path=args.ranker_path,
        ranker_fallback=args.ranker_fallback,
        anchor_index=args.anchor_index,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from .generate import generate

            generate(args)
        elif args.command == "refine":
            from .generate import refine

            refine(args)
        return 0
    except SettingsError as err:
        print(f"i4vgen: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RankerLoadError) as err:  # a model or ranker that cannot load: says what to do
        if os.environ.get("I4VGEN_DEBUG"):
            raise
        print(f"i4vgen: error: {err}\n(set I4VGEN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

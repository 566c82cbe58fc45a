"""The full-size SD1.5 + AnimateDiff motion module v2 architecture with random weights, built offline and cached.

Its pictures are noise, but every call has the real model's shapes, so CPU timings show the real mix of
spatial layers, motion modules, VAE and text encoder. The ``UNetMotionModel`` is built directly (not through
``from_unet2d``, which copies every weight and doubles the peak to about 11.6 GB). Saved once as a diffusers
AnimateDiff folder (``unet/`` holds the UNetMotionModel) under ``$I4VGEN_CACHE`` (default ``~/.cache/i4vgen``)
``/sd15-random-v1``, written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Optional

import torch

from i4vgen_ext.backbones.clip_tokenizer import FULL_VOCAB_SIZE, write_clip_tokenizer
from i4vgen_ext.backbones.configs import MM_V2, SD15_TEXT, SD15_UNET, SD15_VAE, SD_MODEL_INDEX, scheduler_config
from i4vgen_ext.backbones.tiny import build_once

VERSION = "sd15-random-v1"
MARKER_FILE = "i4vgen_sd15_random.json"
SEED = 0


def is_complete(folder: Path) -> bool:
    return (folder / MARKER_FILE).is_file()


def ensure_sd15_random(cache_root: Optional[Path | str] = None) -> Path:
    """The cached folder, built on first use (about 25 s of random init and 6 GB of disk)."""
    return build_once(cache_root, VERSION, build_sd15_random, is_complete)


def motion_unet_config() -> dict:
    """The UNetMotionModel config that ``from_unet2d(SD1.5 UNet, mm v2 adapter)`` would produce, read off models
    built on the ``meta`` device (no memory)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        adapter = MotionAdapter(**MM_V2)
        motion = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    return {k: v for k, v in dict(motion.config).items() if not k.startswith("_")}


def build_sd15_random(directory: Path | str, *, seed: int = SEED) -> Path:
    """Build each component with seeded random weights, save it, and free it before building the next one."""
    from diffusers import AutoencoderKL, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetMotionModel.from_config(motion_unet_config())
        unet.save_pretrained(directory / "unet")
        del unet
        gc.collect()
        torch.manual_seed(seed + 1)
        AutoencoderKL(**SD15_VAE).save_pretrained(directory / "vae")
        torch.manual_seed(seed + 2)
        CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(directory / "text_encoder")
    try:
        write_clip_tokenizer(directory / "tokenizer", vocab_size=FULL_VOCAB_SIZE)
    except FileNotFoundError:  # no CLIP merge list: byte-level ids fit the embedding, prompts still pad to 77
        write_clip_tokenizer(directory / "tokenizer")
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=2))
    index = {**SD_MODEL_INDEX, "_class_name": "AnimateDiffPipeline", "unet": ["diffusers", "UNetMotionModel"],
             "motion_adapter": [None, None]}
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    marker = {"version": VERSION, "seed": seed, "random_weights": True,
              "architecture": "SD1.5 UNet + AnimateDiff motion module v2 (mid block), SD1.5 VAE, CLIP ViT-L/14 text"}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2))  # last: marks the folder complete
    return directory


if __name__ == "__main__":
    print(ensure_sd15_random())

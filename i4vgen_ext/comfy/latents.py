"""Layouts and scales between ComfyUI and the core.

ComfyUI's LATENT ``samples`` is the raw VAE latent with batch = frames, (F, 4, h, w); the model works on
``latent_format.process_in`` of it (SD1.5: x 0.18215). The core works on scaled latents (1, 4, F, h, w). ComfyUI's
IMAGE is (B, H, W, 3) floats in [0, 1]."""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch
from PIL import Image


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """(1, 4, F, h, w) -> (F, 4, h, w)."""
    if video.dim() != 5 or video.shape[0] != 1:
        raise ValueError(f"a video latent is (1, C, F, h, w), got {tuple(video.shape)}")
    return video[0].permute(1, 0, 2, 3).contiguous()


def from_frames(frames: torch.Tensor) -> torch.Tensor:
    """(F, 4, h, w) -> (1, 4, F, h, w)."""
    if frames.dim() != 4:
        raise ValueError(f"frames are (F, C, h, w), got {tuple(frames.shape)}")
    return frames.permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def core_video_from_latent(samples: torch.Tensor, latent_format: Any) -> torch.Tensor:
    """A ComfyUI LATENT's samples (F, 4, h, w), raw -> the core's scaled (1, 4, F, h, w)."""
    return from_frames(latent_format.process_in(samples.float().cpu()))


def latent_from_core_video(video: torch.Tensor, latent_format: Any) -> torch.Tensor:
    """The core's scaled (1, 4, F, h, w) -> a ComfyUI LATENT's raw samples (F, 4, h, w)."""
    return latent_format.process_out(to_frames(video.float().cpu()))


def images_to_pil(images: torch.Tensor) -> List[Image.Image]:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> 8-bit RGB PIL images (as ComfyUI's SaveImage rounds them)."""
    array = np.clip(images.detach().float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
    return [Image.fromarray(a[..., :3]) for a in array]


def pil_to_image(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> ComfyUI IMAGE (1, H, W, 3) in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]

"""The optional anchor IMAGE (paper section 4.5): the first image of the batch, fitted to the video size (cover,
centre-crop, as the CLI and the WebUI fit theirs) and encoded with the workflow's VAE into the core's scaled
(4, h, w) anchor latent; the fitted picture is what the node's ``candidates`` output shows then."""
from __future__ import annotations

from typing import Any, Tuple

import torch

from ..core.anchor_image import fit_to_video, to_rgb8
from ..errors import SettingsError
from .latents import images_to_pil, pil_to_image


def encode_anchor(image: Any, vae: Any, latent_format: Any, *, width: int, height: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the anchor latent (4, h, w), the fitted picture as an IMAGE (1, H, W, 3))."""
    if vae is None:
        raise SettingsError("vae", None, "a VAE when an anchor_image is given (it encodes the anchor)")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] < 1 or image.shape[-1] < 3:
        raise SettingsError("anchor_image", getattr(image, "shape", type(image).__name__),
                            "an IMAGE batch (B, H, W, 3) with at least one image")
    picture = fit_to_video(to_rgb8(images_to_pil(image[:1])[0]), width, height)
    pixels = pil_to_image(picture)
    raw = vae.encode(pixels[:, :, :, :3])
    return latent_format.process_in(raw.float().cpu())[0], pixels

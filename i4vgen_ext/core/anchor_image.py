"""A user-provided anchor image (paper section 4.5): read, normalise to 8-bit RGB, fit to the video size."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import SettingsError

MAX_ASPECT = 8.0


def load_anchor_image(source: Union[str, Path, bytes, Image.Image]) -> Image.Image:
    """Open a path, raw bytes or a PIL image and return it as 8-bit RGB, or raise a ``SettingsError``."""
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(Path(source))
        image.load()
    except Image.DecompressionBombError as err:
        name = "<image bytes>" if isinstance(source, (bytes, bytearray)) else str(source)[:200]
        raise SettingsError("anchor_image", name, too_many_pixels(err)) from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SettingsError("anchor_image", str(source)[:200], f"a readable image file ({err})") from None
    w, h = image.size
    if w == 0 or h == 0:
        raise SettingsError("anchor_image", f"{w}x{h}", "an image with non-zero width and height")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise SettingsError("anchor_image", f"{w}x{h}", f"an aspect ratio of at most {MAX_ASPECT:g}:1")
    return to_rgb8(ImageOps.exif_transpose(image))


def too_many_pixels(error: Exception) -> str:
    """What a ``SettingsError`` says is allowed when Pillow's decompression-bomb guard refused an image."""
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
    if match is None:
        return f"an image within Pillow's decompression-bomb limit ({' '.join(str(error).split())})"
    pixels, limit = (int(g) for g in match.groups())
    return (f"an image of at most {limit:,} pixels (Pillow's decompression-bomb limit, 2 x PIL.Image."
            f"MAX_IMAGE_PIXELS); this one has {pixels:,} pixels")


def to_rgb8(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel: alpha is composited on white, 16-bit and float are rescaled, CMYK/palette convert."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def fit_to_video(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover (width, height), then centre-crop: no distortion, no borders."""
    return ImageOps.fit(image, (width, height), method=Image.BICUBIC, centering=(0.5, 0.5))

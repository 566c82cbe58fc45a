"""The user's anchor image in the WebUI: read from the panel (PIL) or the API (base64), encoded by the host's VAE
the way A1111's image-to-latent path does, to a reproducible latent (posterior mean or seeded sample), on SD1.5's
ldm first stage and on SDXL's sgm one.

Details: docs/webui-host.md §Anchor image.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any, Optional

import torch
from PIL import Image

from ..core.anchor_image import fit_to_video, load_anchor_image
from ..core.settings import SettingsError
from . import shim

DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)
# A scheme or drive ("file:", "http://", "C:\\", "C:/"): base64 never holds ':'; data: URLs are handled above.
SCHEME_OR_DRIVE = re.compile(r"^(?!data:)[A-Za-z][A-Za-z0-9+.-]*:", re.IGNORECASE)
BASE64_ALLOWED = "a base64-encoded image file (PNG, JPEG, WebP, ...), optionally as a data: URL"


def decode_anchor_arg(value: Any) -> Optional[Image.Image]:
    """The anchor image as 8-bit RGB, or None when none was given. Raises a ``SettingsError`` naming
    ``anchor_image`` for anything unreadable. Strings are base64 (never file paths: the API must not read the
    server's files)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        return load_anchor_image(value)
    if isinstance(value, str):
        text = "".join(DATA_URL.sub("", value.strip(), count=1).split())
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = None
        if data is not None:
            try:
                return _from_bytes(data)
            except SettingsError:
                if not looks_like_path(value):
                    raise
        if looks_like_path(value):
            raise SettingsError("anchor_image", f"<a file path or URL of {len(value)} characters>",
                                BASE64_ALLOWED + "; file paths and URLs are refused: the server never opens a file "
                                "or URL named by a request")
        raise SettingsError("anchor_image", f"<text of {len(value)} characters>", BASE64_ALLOWED)
    if isinstance(value, (bytes, bytearray)):
        return _from_bytes(bytes(value))
    raise SettingsError("anchor_image", type(value).__name__, "an image or a base64-encoded image file")


def looks_like_path(text: str) -> bool:
    """Whether text that did not decode to an image reads as a file path or URL (this only picks the refusal's
    wording: a JPEG's base64 starts with "/9j/", so a leading "/" counts only in short text)."""
    t = text.strip()
    if "\\" in t or t.startswith(("./", "../", "~")) or SCHEME_OR_DRIVE.match(t):
        return True
    return t.startswith("/") and len(t) <= 260


def _from_bytes(data: bytes) -> Image.Image:
    if not data:
        raise SettingsError("anchor_image", "<0 bytes>", "a non-empty image file")
    try:
        return load_anchor_image(data)
    except SettingsError as error:
        raise SettingsError("anchor_image", f"<image file of {len(data)} bytes>", error.allowed) from None
    except Image.DecompressionBombError as error:
        raise SettingsError("anchor_image", f"<image file of {len(data)} bytes>", f"a smaller image ({error})") from None


def describe_anchor(image: Image.Image) -> str:
    """What the infotext records about the image: its size and a short hash of its RGB pixels."""
    digest = hashlib.sha256(image.tobytes()).hexdigest()[:12]
    return f"{image.width}x{image.height} sha256:{digest}"


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (1, 3, H, W) float in [0, 1]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).unsqueeze(0).float() / 255.0


@torch.no_grad()
def encode_anchor(p: Any, image: Image.Image, *, sample: bool, seed: int) -> torch.Tensor:
    """The anchor latent (4, h, w), float32, scaled like the host's own latents, for a ``p.width x p.height`` video."""
    devices = shim.devices()
    model = p.sd_model
    fitted = fit_to_video(image, int(p.width), int(p.height))
    x = image_to_tensor(fitted).to(device=shim.shared().device, dtype=devices.dtype_vae) * 2 - 1
    if getattr(model, "is_sdxl", False):
        return _sdxl_latent(model, x, sample=sample, seed=seed)
    posterior = model.encode_first_stage(x)
    if isinstance(posterior, torch.Tensor):  # a deterministic encoder: nothing to sample
        z = posterior
    elif not sample:
        z = posterior.mode()
    elif hasattr(posterior, "std"):
        generator = torch.Generator(device="cpu").manual_seed(int(seed) % 2**64)
        noise = torch.randn(tuple(posterior.mean.shape), generator=generator, dtype=torch.float32)
        z = posterior.mean + posterior.std * noise.to(device=posterior.mean.device, dtype=posterior.mean.dtype)
    else:
        z = posterior.sample()
    return model.get_first_stage_encoding(z)[0].float()


def _sdxl_latent(model: Any, x: torch.Tensor, *, sample: bool, seed: int) -> torch.Tensor:
    """SDXL's first stage in A1111 is sgm's ``AutoencoderKLInferenceWrapper``, whose ``encode`` returns a sample
    drawn with the global torch RNG, and ``get_first_stage_encoding`` is the identity. So the moments are taken as
    sgm's ``AutoencoderKL.encode`` takes them (``quant_conv(encoder(x))``, halves ``mean``/``logvar`` clamped as
    ``DiagonalGaussianDistribution``) and scaled as ``DiffusionEngine.encode_first_stage`` scales them."""
    first_stage = model.first_stage_model
    moments = first_stage.quant_conv(first_stage.encoder(x))
    mean, logvar = torch.chunk(moments, 2, dim=1)
    z = mean
    if sample:
        generator = torch.Generator(device="cpu").manual_seed(int(seed) % 2**64)
        noise = torch.randn(tuple(mean.shape), generator=generator, dtype=torch.float32)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        z = mean + std * noise.to(device=mean.device, dtype=mean.dtype)
    return (model.scale_factor * z)[0].float()

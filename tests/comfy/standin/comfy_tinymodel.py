"""A tiny SD1.5-configured model for the stand-in ComfyUI (pure torch, seeded random weights), a tiny VAE and text
conditioning. ``TinyUNet`` predicts eps from the latent, the timestep and the text; when a motion module is injected
(ADE's stand-in injects one into ``diffusion_model.motion``) it also mixes the frames of the batch, so video calls
differ from image calls. Every forward is appended to ``TinyUNet.log``: (batch, motion on, timesteps)."""
from __future__ import annotations

import zlib

import torch
from comfy import latent_formats
from comfy.model_base import BaseModel, ModelType
from comfy.model_patcher import ModelPatcher
from torch import nn

TEXT_DIM = 8


class SD15:
    """``comfy/supported_models.py:SD15``'s identifying config."""

    unet_config = {"context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}
    latent_format = latent_formats.SD15
    sampling_settings: dict = {}


class SDXL:
    unet_config = {"context_dim": 2048, "model_channels": 320, "adm_in_channels": 2816}
    latent_format = latent_formats.SDXL
    sampling_settings: dict = {}


class TinyUNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.text = nn.Linear(TEXT_DIM, 4)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=generator) * 0.2
        self.motion = None
        self.log = []

    def forward(self, x, timesteps, context=None, transformer_options={}, **kwargs):
        self.log.append((x.shape[0], self.motion is not None, [int(t) for t in timesteps]))
        t = (timesteps.float() / 1000.0)[:, None, None, None]
        h = torch.tanh(self.conv(x)) * (1 + t)
        if context is not None:
            h = h + self.text(context.mean(1)).expand(x.shape[0], -1)[:, :, None, None] * 0.1
        if self.motion is not None:
            h = h + self.motion(h)
        return h


class MotionModule(nn.Module):
    """Mixes each frame with the mean of the frames of its batch (a video, or a context window of one)."""

    def __init__(self, strength: float = 0.5):
        super().__init__()
        self.strength = strength
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        return self.strength * (h.mean(0, keepdim=True) - h)


def text_conditioning(text: str) -> list:
    """A CONDITIONING: ``[[cond (1, tokens, dim), {"pooled_output": ...}]]`` (``nodes.py:CLIPTextEncode``)."""
    generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    cond = torch.randn((1, 3, TEXT_DIM), generator=generator)
    return [[cond, {"pooled_output": cond.mean(1)}]]


def make_model(config=SD15, seed: int = 0) -> ModelPatcher:
    """A MODEL as ``CheckpointLoaderSimple`` returns it (``comfy/sd.py:load_checkpoint_guess_config``)."""
    return ModelPatcher(BaseModel(config, TinyUNet(seed), ModelType.EPS))


class TinyVAE:
    """``comfy/sd.py:VAE``: ``decode`` raw latents (N, 4, h, w) -> IMAGE (N, 8h, 8w, 3) in [0, 1]; ``encode`` IMAGE
    (N, H, W, 3) -> raw latents (N, 4, H/8, W/8) (the posterior's mean)."""

    def __init__(self):
        generator = torch.Generator().manual_seed(7)
        self.to_rgb = torch.randn((3, 4), generator=generator)
        self.decodes = 0

    def decode(self, samples):
        self.decodes += 1
        rgb = torch.einsum("ck,nkhw->nchw", self.to_rgb, samples.float())
        image = torch.sigmoid(nn.functional.interpolate(rgb, scale_factor=8, mode="nearest"))
        return image.permute(0, 2, 3, 1)

    def encode(self, pixels):
        pooled = nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2).float(), 8)
        return torch.einsum("kc,nchw->nkhw", torch.linalg.pinv(self.to_rgb), torch.logit(pooled.clamp(0.01, 0.99)))

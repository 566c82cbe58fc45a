"""A tiny SD1.5-shaped latent diffusion model for the stand-in host (pure torch, random weights, 8x8 latents).

Shaped like ldm's ``LatentDiffusion`` as A1111 uses it: ``model.diffusion_model`` has 12 ``input_blocks``, a
3-layer ``middle_block`` and 12 ``output_blocks`` of ``TimestepEmbedSequential`` (so AnimateDiff's stand-in
injects its motion layers at the real indices), ``apply_model(x, t, cond={"c_crossattn": [...]})`` returns eps,
``alphas_cumprod``/``alphas_cumprod_original`` hold SD's scaled-linear schedule, ``get_learned_conditioning`` is a
tiny hashed text encoder, ``decode_first_stage`` a tiny VAE decoder, ``encode_first_stage`` /
``get_first_stage_encoding`` a tiny VAE encoder with ldm's posterior and ``scale_factor``. Every UNet forward is logged with the job
text, batch size, motion-module calls and active LoRA, so tests can see what each stage ran."""
from __future__ import annotations

import contextlib
import math
import sys
import zlib
from types import SimpleNamespace

import torch
from torch import nn

from modules import extra_networks, shared

CHANNELS = 8
CONTEXT_DIM = 8
TOKENS = 4


class TimestepEmbedSequential(nn.Sequential):
    """ldm ``openaimodel.TimestepEmbedSequential``: blocks that take (x, emb, context), other layers just x."""

    def forward(self, x, emb, context=None):
        for layer in self:
            x = layer(x, emb, context) if isinstance(layer, TinyResAttn) else layer(x)
        return x


class TinyResAttn(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(CHANNELS, channels)
        self.ctx = nn.Linear(CONTEXT_DIM, channels)

    def forward(self, x, emb, context):
        h = self.conv(torch.nn.functional.silu(x)) + self.emb(emb)[:, :, None, None]
        h = h + self.ctx(context.mean(dim=1))[:, :, None, None]
        return x + 0.3 * torch.tanh(h)


class Upsample(nn.Module):
    """Stands in for the last layer of every third output block (where AD inserts before the last layer)."""

    def forward(self, x):
        return x


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.time_embed = nn.Linear(CHANNELS, CHANNELS)
        self.conv_in = nn.Conv2d(4, CHANNELS, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(TinyResAttn(CHANNELS)) for _ in range(12)])
        self.middle_block = TimestepEmbedSequential(TinyResAttn(CHANNELS), TinyResAttn(CHANNELS), TinyResAttn(CHANNELS))
        self.output_blocks = nn.ModuleList([
            TimestepEmbedSequential(TinyResAttn(CHANNELS), Upsample()) if i % 3 == 2 and i != 11
            else TimestepEmbedSequential(TinyResAttn(CHANNELS))
            for i in range(12)
        ])
        self.lora = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.out = nn.Conv2d(CHANNELS, 4, 3, padding=1)

    def forward(self, x, timesteps, context):
        half = CHANNELS // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = timesteps.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        h = self.conv_in(x)
        lora = sum(extra_networks.active_lora.values())
        if lora:
            h = h + lora * self.lora(h)
        for block in self.input_blocks:
            h = block(h, emb, context)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(h, emb, context)
        return self.out(h)


class TinyTextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(97, CONTEXT_DIM)

    def forward(self, prompts):
        rows = []
        for prompt in prompts:
            words = (prompt.lower().split() + ["<pad>"] * TOKENS)[:TOKENS]
            ids = torch.tensor([zlib.crc32(w.encode()) % 97 for w in words])
            rows.append(self.table(ids))
        return torch.stack(rows)


class DiagonalGaussianDistribution:
    """ldm ``modules/distributions/distributions.py``: ``mean``/``logvar`` halves of the encoder output, ``std``,
    ``sample()`` with the global torch RNG, ``mode()`` = the mean."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self):
        return self.mean + self.std * torch.randn(self.mean.shape).to(device=self.parameters.device)

    def mode(self):
        return self.mean


class TinyDecoder(nn.Module):
    """The first-stage model: ``decode`` (via ``forward``) and ldm ``AutoencoderKL.encode`` -> a posterior."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1)
        self.encoder = nn.Conv2d(3, 8, 8, stride=8)
        self.dtype = torch.float32

    def forward(self, z):
        return torch.tanh(torch.nn.functional.interpolate(self.conv(z), scale_factor=8, mode="nearest"))

    def encode(self, x):
        return DiagonalGaussianDistribution(self.encoder(x))


class TinyLatentDiffusion(nn.Module):
    parameterization = "eps"
    is_sdxl = is_sd2 = is_sd3 = is_ssd = False
    is_sd1 = True
    cond_stage_key = "txt"
    lowvram = False

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = SimpleNamespace(diffusion_model=TinyUNet(), conditioning_key="crossattn")
            self.diffusion_model = self.model.diffusion_model  # registered as a submodule
            self.cond_stage_model = TinyTextEncoder()
            self.first_stage_model = TinyDecoder()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
        self.alphas_cumprod_original = self.alphas_cumprod
        self.num_timesteps = 1000
        self.sd_checkpoint_info = SimpleNamespace(name_for_extra="tiny", short_title="tiny")
        self.sd_model_hash = "00000000"
        self.network_layer_mapping = {}
        self.scale_factor = 0.18215
        self.unet_log = []  # (job text, batch, motion-module calls, active lora)
        self.encode_log = []  # every encode_first_stage input
        self.eval()

    def ema_scope(self):
        return contextlib.nullcontext()

    @torch.no_grad()
    def get_learned_conditioning(self, prompts):
        return self.cond_stage_model(list(prompts))

    @torch.no_grad()
    def apply_model(self, x_noisy, t, cond):
        counter = getattr(sys.modules.get("motion_module"), "TemporalCounter", None)
        calls = (lambda: counter.calls) if counter is not None else (lambda: 0)
        context = torch.cat(cond["c_crossattn"], 1) if isinstance(cond, dict) else cond
        before = calls()
        eps = self.model.diffusion_model(x_noisy, t, context)
        self.unet_log.append((shared.state.textinfo, x_noisy.shape[0], calls() - before,
                              dict(extra_networks.active_lora)))
        return eps

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model(z)

    @torch.no_grad()
    def encode_first_stage(self, x):
        self.encode_log.append(x.clone())
        return self.first_stage_model.encode(x)

    @torch.no_grad()
    def get_first_stage_encoding(self, encoder_posterior):
        """ldm ``LatentDiffusion.get_first_stage_encoding``: a posterior is sampled, a tensor used as is."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(f"encoder_posterior of type '{type(encoder_posterior)}' not yet implemented")
        return self.scale_factor * z

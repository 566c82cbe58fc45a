"""A tiny SD1.5-shaped latent diffusion model for the stand-in host (pure torch, random weights, 8x8 latents).

Shaped like ldm's ``LatentDiffusion`` as A1111 uses it: ``model.diffusion_model`` has 12 ``input_blocks``, a
3-layer ``middle_block`` and 12 ``output_blocks`` of ``TimestepEmbedSequential`` laid out like SD1.5's
``openaimodel.UNetModel`` (so AnimateDiff's stand-in injects its motion layers at the real indices): a res block in
each, ldm ``SpatialTransformer``s (``ldm/modules/attention.py``, with ``transformer_blocks.0.attn1`` a
``CrossAttention``) in input blocks 1, 7, middle block 1 and output blocks 3, 9 (the highest and the lowest resolution
with attention, one per side; SD1.5 has them in input blocks 1, 2, 4, 5, 7, 8 and output blocks 3-11), ``Downsample``
alone in input blocks 3, 6, 9 and ``Upsample`` last in output blocks 2, 5, 8 (8x8 latents run at 8x8, 4x4, 2x2 and 1x1; no skip
connections). ``apply_model(x, t, cond={"c_crossattn": [...]})`` returns eps,
``alphas_cumprod``/``alphas_cumprod_original`` hold SD's scaled-linear schedule, ``get_learned_conditioning`` is a
tiny hashed text encoder, ``decode_first_stage`` a tiny VAE decoder, ``encode_first_stage`` /
``get_first_stage_encoding`` a tiny VAE encoder with ldm's posterior and ``scale_factor``. Every UNet forward is logged
with the job text, batch size, motion-module calls and active LoRA, so tests can see what each stage ran."""
from __future__ import annotations

import contextlib
import math
import sys
import zlib
from types import SimpleNamespace

import torch
from ldm.modules.attention import SpatialTransformer
from modules import extra_networks, shared
from torch import nn

CHANNELS = 8
HEADS = 2
CONTEXT_DIM = 8
TOKENS = 4


class TimestepEmbedSequential(nn.Sequential):
    """ldm ``openaimodel.TimestepEmbedSequential``: res blocks take (x, emb, context), spatial transformers
    (x, context), other layers (and AnimateDiff's motion modules) just x."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, TinyResAttn):
                x = layer(x, emb, context)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
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


class Downsample(nn.Module):
    """ldm ``openaimodel.Downsample(channels, use_conv, dims=2, out_channels=None, padding=1)``, alone in input blocks
    3, 6 and 9: halves the size (2x2 average here; a strided conv in SD)."""

    def __init__(self, channels=CHANNELS, use_conv=True, dims=2, out_channels=None, padding=1):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)


class Upsample(nn.Module):
    """ldm ``openaimodel.Upsample``: the last layer of output blocks 2, 5 and 8 (AD inserts before it): doubles the
    size (nearest). Without skip connections the tiny UNet needs latent sides divisible by 8."""

    def __init__(self, channels=CHANNELS, use_conv=True, dims=2, out_channels=None, padding=1):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


def spatial_transformer():
    # Linear projections (ldm's use_linear, as in SD2): SD1.5's 1x1 convs cost far more on CPU at this size.
    return SpatialTransformer(CHANNELS, HEADS, CHANNELS // HEADS, depth=1, context_dim=CONTEXT_DIM, use_linear=True)


# Spatial transformers at the highest and the lowest resolution with attention, one per side, where SD1.5 has 16
# (each costs ~20 module calls per UNet forward on CPU); the block layout, and so AnimateDiff's injection indices,
# are SD1.5's.
INPUT_ATTENTION = (1, 7)  # SD1.5: 1, 2, 4, 5, 7, 8
OUTPUT_ATTENTION = (3, 9)  # SD1.5: 3 to 11


def input_block(index):
    if index in (3, 6, 9):
        return TimestepEmbedSequential(Downsample(CHANNELS))
    if index in INPUT_ATTENTION:
        return TimestepEmbedSequential(TinyResAttn(CHANNELS), spatial_transformer())
    return TimestepEmbedSequential(TinyResAttn(CHANNELS))


def output_block(index):
    layers = [TinyResAttn(CHANNELS)]
    if index in OUTPUT_ATTENTION:
        layers.append(spatial_transformer())
    if index in (2, 5, 8):
        layers.append(Upsample(CHANNELS))
    return TimestepEmbedSequential(*layers)


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.time_embed = nn.Linear(CHANNELS, CHANNELS)
        self.conv_in = nn.Conv2d(4, CHANNELS, 3, padding=1)
        self.input_blocks = nn.ModuleList([input_block(i) for i in range(12)])
        self.middle_block = TimestepEmbedSequential(TinyResAttn(CHANNELS), spatial_transformer(), TinyResAttn(CHANNELS))
        self.output_blocks = nn.ModuleList([output_block(i) for i in range(12)])
        self.lora = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.out = nn.Conv2d(CHANNELS, 4, 3, padding=1)

    def forward(self, x, timesteps, context, control=None, y=None):
        """``control``: the stand-in ControlNet's residual, added after the input convolution (the real ControlNet
        re-implements the UNet forward and adds its 13 residuals to the skip connections and the middle block)."""
        half = CHANNELS // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = timesteps.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        if y is not None:  # SDXL's pooled-text/size vector (sgm ``label_emb``)
            emb = emb + self.label_emb(y)
        h = self.conv_in(x)
        if control is not None:
            h = h + control
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
        self.context_log = []  # the cross-attention context of every UNet call
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
        self.context_log.append(context)
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


class TinySgmAutoencoder(TinyDecoder):
    """sgm ``AutoencoderKLInferenceWrapper`` (SDXL's first stage in A1111): ``encoder`` then ``quant_conv`` give the
    moments; ``encode`` returns a sample drawn with the global torch RNG (no posterior object)."""

    def __init__(self):
        super().__init__()
        self.quant_conv = nn.Conv2d(8, 8, 1)

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x))).sample()


class TinySDXL(TinyLatentDiffusion):
    """The tiny model as A1111 runs an SDXL checkpoint (``modules/sd_models_xl.py`` over sgm's ``DiffusionEngine``):
    ``is_sdxl``, conditioning as a dict ``{"crossattn", "vector"}`` (``get_learned_conditioning``), ``apply_model``
    taking that dict with ``c_concat``, ``encode_first_stage`` = ``scale_factor * first_stage_model.encode(x)``
    (sgm), ``get_first_stage_encoding`` the identity (A1111's patch), ``scale_factor`` 0.13025."""

    is_sdxl = True
    is_sd1 = False

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            self.model.diffusion_model.label_emb = nn.Linear(CONTEXT_DIM, CHANNELS)
            self.first_stage_model = TinySgmAutoencoder()
        self.scale_factor = 0.13025
        self.sd_checkpoint_info = SimpleNamespace(name_for_extra="tiny-xl", short_title="tiny-xl")
        self.eval()

    @torch.no_grad()
    def get_learned_conditioning(self, prompts):
        crossattn = self.cond_stage_model(list(prompts))
        return {"crossattn": crossattn, "vector": crossattn.mean(dim=1)}

    @torch.no_grad()
    def apply_model(self, x_noisy, t, cond):
        counter = getattr(sys.modules.get("motion_module"), "TemporalCounter", None)
        calls = (lambda: counter.calls) if counter is not None else (lambda: 0)
        before = calls()
        self.context_log.append(cond["crossattn"])
        eps = self.model.diffusion_model(x_noisy, t, cond["crossattn"], y=cond["vector"])
        self.unet_log.append((shared.state.textinfo, x_noisy.shape[0], calls() - before,
                              dict(extra_networks.active_lora)))
        return eps

    @torch.no_grad()
    def encode_first_stage(self, x):
        self.encode_log.append(x.clone())
        return self.scale_factor * self.first_stage_model.encode(x)

    @torch.no_grad()
    def get_first_stage_encoding(self, x):
        return x

"""A random-weight, full-size SDXL base checkpoint in the single-file layout A1111 loads with sgm's
``sd_xl_base.yaml`` (2516 tensors: the UNet, CLIP ViT-L, OpenCLIP ViT-bigG's text tower, the VAE, the denoiser's
sigmas), written one tensor at a time from shapes alone so that writing it holds the fp16 file once, not an fp32
model (about 7 GB instead of 21).

Shapes come from diffusers' SDXL UNet and VAE and transformers' CLIP built on the meta device, renamed by
``ldm_convert``; OpenCLIP's tower is spelled out. Values follow PyTorch's default initialisation (uniform within
1/sqrt(fan_in)), so activations stay finite through every block as they do for the random SD1.5 checkpoint.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple

import torch

from i4vgen_ext.backbones.configs import CLIP_PREFIX, SD15_TEXT, SD15_VAE, UNET_PREFIX
from i4vgen_ext.backbones.ldm_convert import text_encoder_to_ldm, unet_key_to_ldm, vae_to_ldm

SDXL_UNET = dict(
    sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
BIGG = dict(width=1280, layers=32, mlp=5120, vocab=49408, positions=77)
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = "conditioner.embedders.1.model."
SIGMAS = "denoiser.sigmas"
EMBEDDINGS = ("token_embedding.weight", "position_embedding.weight", "positional_embedding")

Shapes = Dict[str, Tuple[int, ...]]


def _meta_shapes(build) -> Dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build().state_dict()


def bigg_shapes() -> Shapes:
    w, m = BIGG["width"], BIGG["mlp"]
    out: Shapes = {"positional_embedding": (BIGG["positions"], w), "text_projection": (w, w), "logit_scale": (),
                   "token_embedding.weight": (BIGG["vocab"], w), "ln_final.weight": (w,), "ln_final.bias": (w,)}
    for i in range(BIGG["layers"]):
        block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
                 "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
                 "mlp.c_fc.weight": (m, w), "mlp.c_fc.bias": (m,), "mlp.c_proj.weight": (w, m), "mlp.c_proj.bias": (w,)}
        out.update({f"transformer.resblocks.{i}.{k}": v for k, v in block.items()})
    return {BIGG_PREFIX + k: v for k, v in out.items()}


def sdxl_shapes() -> Shapes:
    """Every tensor of an SDXL base checkpoint, by its A1111/sgm name."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = _meta_shapes(lambda: UNet2DConditionModel(**SDXL_UNET))
    shapes: Shapes = {UNET_PREFIX + unet_key_to_ldm(k, SDXL_UNET): tuple(v.shape) for k, v in unet.items()}
    clip = text_encoder_to_ldm(_meta_shapes(lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT))))
    shapes.update({CLIP_L_PREFIX + k[len(CLIP_PREFIX):]: tuple(v.shape) for k, v in clip.items()})
    shapes.update(bigg_shapes())
    vae = vae_to_ldm(_meta_shapes(lambda: AutoencoderKL(**SD15_VAE)), SD15_VAE)  # SDXL's VAE has SD1.5's shapes
    shapes.update({k: tuple(v.shape) for k, v in vae.items()})
    shapes[SIGMAS] = (1000,)
    return shapes


def legacy_ddpm_sigmas() -> torch.Tensor:
    """sgm's ``LegacyDDPMDiscretization`` as ``DiscreteDenoiser`` stores it: ascending, computed as sgm computes it."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).float() ** 0.5


def random_tensor(key: str, shape: Tuple[int, ...], shapes: Shapes, generator: torch.Generator) -> torch.Tensor:
    if key == SIGMAS:
        return legacy_ddpm_sigmas()
    if key.endswith("position_ids"):
        return torch.arange(shape[-1])[None]
    if key.endswith("logit_scale"):
        return torch.tensor(math.log(1 / 0.07))
    if key.endswith(EMBEDDINGS):
        return (torch.randn(shape, generator=generator) * 0.02).half()
    if key.endswith("text_projection"):
        return (torch.randn(shape, generator=generator) * shape[0] ** -0.5).half()
    weight_key = key[: -len("bias")] + "weight" if key.endswith("bias") else key.replace("_bias", "_weight")
    weight_shape = shapes.get(weight_key, shape)
    if len(weight_shape) <= 1:  # a norm: around 1, with a bias that is not 0 (A1111's emphasis divides by a mean)
        base = 1.0 if key.endswith("weight") else 0.0
        return (base + torch.randn(shape, generator=generator) * 0.1).half()
    bound = math.prod(weight_shape[1:]) ** -0.5
    return ((torch.rand(shape, generator=generator) * 2 - 1) * bound).half()


def write_sdxl_checkpoint(path: Path, seed: int) -> Shapes:
    from safetensors.torch import save_file

    shapes = sdxl_shapes()
    generator = torch.Generator().manual_seed(seed)
    tensors = {key: random_tensor(key, shapes[key], shapes, generator).contiguous() for key in sorted(shapes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    print(f"wrote {path} ({len(tensors)} tensors, {path.stat().st_size / 2**30:.1f} GiB)")
    return shapes

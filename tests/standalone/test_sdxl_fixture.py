"""The random SDXL checkpoint the live suite serves (tests/webui_api/sdxl_models.py) has exactly the tensors A1111's
sgm model for ``sd_xl_base.yaml`` holds, so the WebUI loads it as SDXL with nothing left uninitialised."""
from __future__ import annotations

import hashlib

import torch

from tests.webui_api.sdxl_models import SIGMAS, legacy_ddpm_sigmas, random_tensor, sdxl_shapes

# sha256 over the sorted "name:[shape]" lines of ``DiffusionEngine(sd_xl_base.yaml).state_dict()`` (generative-models
# 45c443b, the commit A1111 1.10.1 uses; 2516 tensors), built on the meta device in the WebUI's environment.
SGM_SDXL_BASE_DIGEST = "d3b7915749a40b2c49e9da17c58f36edce7e17d30d4a245122e8e80ac6f159d4"


def test_every_name_and_shape_matches_sgm_sdxl_base():
    shapes = sdxl_shapes()
    lines = "\n".join(f"{key}:{list(shapes[key])}" for key in sorted(shapes))
    assert len(shapes) == 2516
    assert hashlib.sha256(lines.encode()).hexdigest() == SGM_SDXL_BASE_DIGEST


def test_the_pooled_size_embedding_is_named_as_sgm_names_it():
    shapes = sdxl_shapes()
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert shapes["model.diffusion_model.label_emb.0.2.weight"] == (1280, 1280)


def test_sigmas_are_sgms_legacy_ddpm_discretization():
    sigmas = legacy_ddpm_sigmas()
    assert sigmas.shape == (1000,) and sigmas.dtype == torch.float32
    assert bool((sigmas[1:] > sigmas[:-1]).all())  # DiscreteDenoiser flips the descending schedule back
    assert abs(sigmas[0].item() - 0.029168) < 1e-5 and abs(sigmas[-1].item() - 14.614642) < 1e-4


def test_values_follow_default_init_and_norm_biases_are_not_zero():
    shapes = {"a.weight": (64, 32), "a.bias": (64,), "norm.weight": (32,), "norm.bias": (32,),
              "attn.in_proj_weight": (96, 32), "attn.in_proj_bias": (96,), SIGMAS: (1000,)}
    generator = torch.Generator().manual_seed(0)
    values = {key: random_tensor(key, shape, shapes, generator) for key, shape in shapes.items()}
    assert values["a.weight"].dtype == torch.float16 and values["a.weight"].abs().max() <= 32 ** -0.5
    assert values["a.bias"].abs().max() <= 32 ** -0.5 and values["attn.in_proj_bias"].abs().max() <= 32 ** -0.5
    assert abs(values["norm.weight"].float().mean().item() - 1) < 0.1 and values["norm.bias"].abs().mean() > 0.01
    assert torch.equal(values[SIGMAS], legacy_ddpm_sigmas())

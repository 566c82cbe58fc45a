"""The random Control-LoRA of tests/webui_api/control_lora.py against what sd-webui-controlnet 1.1.455 reads
(scripts/controlnet_model_guess.py, scripts/controlnet_lora.py), on the LDM keys of a tiny SDXL-topology UNet:
the marker, SDXL detection, a LoRA pair for every encoder Linear/Conv whose product has the UNet weight's shape,
full biases and norms, the hint block and one zero conv per input block at the right widths."""
from __future__ import annotations

import math

import pytest
import torch

from i4vgen_ext.backbones.ldm_convert import unet_to_ldm
from tests.webui_api.control_lora import ENCODER_PARTS, MARKER, UNET_PREFIX, control_lora
from tests.webui_api.sdxl_models import SDXL_UNET

diffusers = pytest.importorskip("diffusers")

# SDXL's topology (no attention at level 0, 2 and then more transformer blocks, linear projections, text_time
# added embedding = label_emb) at tiny widths.
TINY_SDXL_UNET = {
    **SDXL_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64), "transformer_layers_per_block": (1, 2, 3),
    "attention_head_dim": (2, 4, 4), "cross_attention_dim": 32, "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 8,
}
RANK = 4


@pytest.fixture(scope="module")
def unet_shapes():
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**TINY_SDXL_UNET)
    return {k: v.shape for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}


@pytest.fixture(scope="module")
def state(unet_shapes):
    return control_lora(unet_shapes, rank=RANK, seed=0)


def encoder(unet_shapes):
    plain = {k[len(UNET_PREFIX):]: v for k, v in unet_shapes.items()}
    return {k: v for k, v in plain.items() if k.split(".")[0] in ENCODER_PARTS}


def test_marker_and_sdxl_detection(state):
    assert state[MARKER].numel() == 0
    assert "input_blocks.11.0.in_layers.0.weight" not in state  # CN's test for SDXL
    assert any(k.startswith("label_emb.0.0.") for k in state), "SDXL's label_emb (add_embedding) has no LoRA"
    assert state["input_hint_block.0.weight"].shape[1] == 3  # CN's hint_channels


def test_every_encoder_layer_is_a_lora_pair_or_a_full_tensor(unet_shapes, state):
    for key, shape in encoder(unet_shapes).items():
        layer = key.rpartition(".")[0]
        if len(shape) >= 2:
            up, down = state[f"{layer}.up"], state[f"{layer}.down"]
            assert up.shape[1] == down.shape[0] == RANK, key
            delta = (up.flatten(1) @ down.flatten(1)).reshape(shape)  # Conv2dWithLoRA / LinearWithLoRA.forward
            assert delta.shape == shape and key not in state, key  # a full weight would replace the UNet's
            assert 0 < delta.std() < 0.5 / math.sqrt(math.prod(shape[1:])), key
        else:
            assert state[key].shape == shape, key


def test_nothing_outside_the_controlnet(unet_shapes, state):
    names = set(encoder(unet_shapes))
    layers = {k.rpartition(".")[0] for k in names}
    extra = {"input_hint_block", "zero_convs", "middle_block_out"}
    for key in state:
        if key == MARKER or key.split(".")[0] in extra:
            continue
        layer, _, name = key.rpartition(".")
        assert (name in ("up", "down") and layer in layers) or key in names, key


def test_hint_block_zero_convs_and_middle_out_widths(unet_shapes, state):
    widths = [3, 16, 16, 32, 32, 96, 96, 256, 32]
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        assert state[f"input_hint_block.{2 * i}.weight"].shape == (c_out, c_in, 3, 3)
    expected = [32] * 4 + [64] * 5  # conv_in; 2 resnets + downsampler per level but the last
    zero_convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("zero_convs.") and k.endswith(".weight"))
    assert zero_convs == list(range(len(expected)))
    for i, c in enumerate(expected):
        assert state[f"zero_convs.{i}.0.weight"].shape == (c, c, 1, 1)
        assert state[f"zero_convs.{i}.0.bias"].shape == (c,)
    assert state["middle_block_out.0.weight"].shape == (64, 64, 1, 1)


def test_finite_seeded_and_the_same_from_tensors(unet_shapes, state):
    assert all(torch.isfinite(t).all() for t in state.values())
    again, other = control_lora(unet_shapes, rank=RANK, seed=0), control_lora(unet_shapes, rank=RANK, seed=1)
    assert all(torch.equal(state[k], again[k]) for k in state)
    from_tensors = control_lora({k: torch.empty(v, device="meta") for k, v in unet_shapes.items()}, rank=RANK, seed=0)
    assert all(torch.equal(state[k], from_tensors[k]) for k in state)
    assert not torch.equal(state["zero_convs.0.0.weight"], other["zero_convs.0.0.weight"])


def test_refuses_a_bad_rank_or_key_set(unet_shapes):
    with pytest.raises(ValueError, match="rank"):
        control_lora(unet_shapes, rank=0, seed=0)
    with pytest.raises(KeyError, match="input_blocks.0.0.weight"):
        control_lora({"model.diffusion_model.out.2.weight": (4, 32, 3, 3)}, rank=RANK, seed=0)

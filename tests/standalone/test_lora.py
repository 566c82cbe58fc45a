"""kohya / A1111 LoRA files fused into the shared image/video weights (a LoRA written at test time)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone
from i4vgen_ext.backbones.lora import fuse_lora, lora_targets

pytestmark = pytest.mark.standalone

RANK, ALPHA, WEIGHT = 4, 2.0, 0.7
# kohya layer name -> (module path in the backbone, kernel size); one name in the LDM spelling.
LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 0),
    "lora_unet_input_blocks_4_1_proj_in": ("unet", "down_blocks.1.attentions.0.proj_in", 1),
    "lora_unet_up_blocks_1_resnets_0_conv1": ("unet", "up_blocks.1.resnets.0.conv1", 3),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ("text_encoder", "encoder.layers.0.self_attn.q_proj", 0),
}


def module(backbone: DiffusersBackbone, owner: str, path: str) -> torch.nn.Module:
    return getattr(backbone, owner).get_submodule(path)


@pytest.fixture(scope="module")
def lora_file(demo_backbone, tmp_path_factory) -> Path:
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (owner, path, kernel) in LAYERS.items():
        weight = module(demo_backbone, owner, path).weight
        out_features, in_features = weight.shape[:2]
        down_shape = (RANK, in_features) + ((kernel, kernel) if kernel else ())
        up_shape = (out_features, RANK) + ((1, 1) if kernel else ())
        tensors[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.5
        tensors[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.5
        tensors[f"{name}.alpha"] = torch.tensor(ALPHA)
    path = tmp_path_factory.mktemp("lora") / "tiny_lora.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def lora_backbone(demo_model_dir, lora_file) -> DiffusersBackbone:
    return DiffusersBackbone.load(str(demo_model_dir), loras=[(str(lora_file), WEIGHT)])


def test_lora_is_fused_as_weight_times_alpha_over_rank_up_down(demo_backbone, lora_backbone, lora_file):
    from safetensors.torch import load_file

    tensors = load_file(str(lora_file))
    for name, (owner, path, _) in LAYERS.items():
        base = module(demo_backbone, owner, path).weight
        up, down = tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"]
        expected = base + WEIGHT * ALPHA / RANK * (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
        torch.testing.assert_close(module(lora_backbone, owner, path).weight, expected, rtol=0, atol=1e-6)
    expected_entry = {"path": str(lora_file), "weight": WEIGHT, "layers": 4, "unmatched": 0}
    assert lora_backbone.description["loras"] == [expected_entry]


def test_lora_changes_image_and_video_predictions(demo_backbone, lora_backbone):
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    base, tuned = demo_backbone.denoiser("a cat", "", 7.5, 10), lora_backbone.denoiser("a cat", "", 7.5, 10)
    assert not torch.equal(base.embeddings, tuned.embeddings)  # text encoder LoRA
    for latents, video in ((x, True), (x[:, :, 0], False)):
        change = base.predict_noise(latents, 901, video=video) - tuned.predict_noise(latents, 901, video=video)
        assert change.abs().max() > 1e-4
    # The image view and the video UNet hold the same (fused) tensor.
    assert lora_backbone.image_unet.conv_in is lora_backbone.unet.conv_in
    shared = "up_blocks.1.resnets.0.conv1"
    assert lora_backbone.image_unet.get_submodule(shared).weight is lora_backbone.unet.get_submodule(shared).weight


def test_lora_weight_zero_changes_nothing(demo_backbone, demo_model_dir, lora_file):
    zero = DiffusersBackbone.load(str(demo_model_dir), loras=[(str(lora_file), 0.0)])
    for owner in ("unet", "text_encoder"):
        base, other = getattr(demo_backbone, owner).state_dict(), getattr(zero, owner).state_dict()
        assert all(torch.equal(base[k], other[k]) for k in base)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(demo_backbone.denoiser("a cat", "", 7.5, 10).predict_noise(x, 501, video=False),
                       zero.denoiser("a cat", "", 7.5, 10).predict_noise(x, 501, video=False))
    assert zero.description["loras"][0]["weight"] == 0.0


def test_ldm_and_diffusers_layer_names_address_the_same_modules(demo_backbone):
    targets = lora_targets(demo_backbone.unet, demo_backbone.text_encoder)
    same = {
        "lora_unet_input_blocks_0_0": "lora_unet_conv_in",
        "lora_unet_input_blocks_4_1_proj_in": "lora_unet_down_blocks_1_attentions_0_proj_in",
        "lora_unet_input_blocks_3_0_op": "lora_unet_down_blocks_0_downsamplers_0_conv",
        "lora_unet_middle_block_2_in_layers_2": "lora_unet_mid_block_resnets_1_conv1",
        "lora_unet_output_blocks_2_1_conv": "lora_unet_up_blocks_0_upsamplers_0_conv",
        "lora_unet_output_blocks_5_2_conv": "lora_unet_up_blocks_1_upsamplers_0_conv",
        "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_k":
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k",
        "lora_unet_time_embed_0": "lora_unet_time_embedding_linear_1",
        "lora_unet_out_2": "lora_unet_conv_out",
        "lora_te_encoder_layers_1_mlp_fc1": "lora_te_text_model_encoder_layers_1_mlp_fc1",
    }
    for ldm, diffusers in same.items():
        assert targets[ldm] is targets[diffusers], ldm
    assert "lora_unet_down_blocks_0_motion_modules_0_proj_in" in targets  # motion LoRAs can address them too


def test_unmatched_layers_warn_and_foreign_files_fail(demo_backbone):
    targets = lora_targets(demo_backbone.unet, demo_backbone.text_encoder)
    known = "lora_unet_down_blocks_0_attentions_0_proj_out"
    weight = targets[known].weight
    def pair(name, shape_in):
        up_shape = (weight.shape[0], 1, *([1] * (weight.ndim - 2)))
        return {f"{name}.lora_down.weight": torch.zeros(1, *shape_in), f"{name}.lora_up.weight": torch.zeros(up_shape)}

    with pytest.warns(UserWarning, match="1 of 2"):
        report = fuse_lora(targets, {**pair(known, weight.shape[1:]), **pair("lora_unet_nowhere", (3,))}, 0.0)
    assert report.layers == 1 and report.unmatched == ["lora_unet_nowhere"]
    with pytest.raises(ValueError, match="none of its"):
        fuse_lora(targets, pair("lora_unet_nowhere", (3,)), 1.0)
    with pytest.raises(ValueError, match="kohya"):
        fuse_lora(targets, {"unet.down_blocks.0.lora_A.weight": torch.zeros(1)}, 1.0)

"""LoRA files fused through diffusers' own loader (peft) give the weights W + weight * alpha / rank * up @ down that
our own fusion gave, for kohya files in both layer spellings and for diffusers/peft files; no peft layer remains."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from i4vgen_ext.backbones import lora
from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone
from i4vgen_ext.backbones.loading import load_model_parts
from i4vgen_ext.backbones.lora import fuse_loras, lora_targets, read_lora
from i4vgen_ext.errors import LoraFileError, MissingDependencyError

pytestmark = pytest.mark.standalone


def fresh_parts(demo_model_dir: Path):
    return load_model_parts(str(demo_model_dir))


def kohya_layers(parts, spelling: str) -> Dict[str, nn.Module]:
    """Every spatial Linear/Conv2d of the UNet and every Linear of the text encoder, under its kohya name: the UNet
    in ``spelling`` ("diffusers" or "ldm"), the text encoder as kohya writes it (with ``text_model``)."""
    diffusers_names = {id(m): "lora_unet_" + n.replace(".", "_") for n, m in parts.unet.named_modules()
                       if isinstance(m, (nn.Linear, nn.Conv2d)) and "motion_modules" not in n}
    layers = {}
    for name, module in lora_targets(parts.unet, parts.text_encoder).items():
        if name.startswith("lora_te_text_model_"):
            layers[name] = module
        elif id(module) in diffusers_names and (name == diffusers_names[id(module)]) == (spelling == "diffusers"):
            layers[name] = module
    return layers


def _diffusers_path(unet: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in unet.named_modules() if m is module)


def random_lora(layers: Dict[str, nn.Module], seed: int, *, peft: bool = False) -> Dict[str, torch.Tensor]:
    """Ranks 1-4 and alphas 1-5 that vary by layer (so per-layer alphas are exercised), 1x1 up for convs."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, (name, module) in enumerate(layers.items()):
        weight = module.weight
        rank, alpha = 1 + index % 4, float(1 + index % 5)
        down = torch.randn((rank, *weight.shape[1:]), generator=generator) * 0.3
        up = torch.randn((weight.shape[0], rank, *([1] * (weight.ndim - 2))), generator=generator) * 0.3
        if peft:
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
        else:
            tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return tensors


def reference_weights(layers: Dict[str, nn.Module], files: List[Tuple[Dict[str, torch.Tensor], float]],
                      *, peft: bool = False) -> Dict[str, torch.Tensor]:
    """Today's fusion math, by hand: W + weight * alpha / rank * up @ down (peft files: alpha = rank)."""
    expected = {name: module.weight.detach().clone() for name, module in layers.items()}
    down_key, up_key = (".lora_A.weight", ".lora_B.weight") if peft else (".lora_down.weight", ".lora_up.weight")
    for tensors, weight in files:
        for name in layers:
            down, up = tensors[name + down_key], tensors[name + up_key]
            alpha = float(tensors.get(name + ".alpha", down.shape[0]))
            delta = (up.flatten(1) @ down.flatten(1)).reshape(expected[name].shape)
            expected[name] = expected[name] + weight * alpha / down.shape[0] * delta
    return expected


def assert_fused(layers: Dict[str, nn.Module], expected: Dict[str, torch.Tensor]) -> None:
    for name, module in layers.items():
        torch.testing.assert_close(module.weight, expected[name], rtol=1e-5, atol=1e-5, msg=name)


def assert_plain_modules(parts) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in (parts.unet, parts.image_unet, parts.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
        assert not getattr(model, "peft_config", None)


@pytest.fixture
def no_hand_fusion(monkeypatch):
    """Fail if our own fusion runs: the file must go through diffusers."""
    def refuse(*args, **kwargs):
        raise AssertionError("fused by our own code, not through diffusers")

    monkeypatch.setattr(lora, "_add_deltas", refuse)


@pytest.mark.parametrize("spelling", ["diffusers", "ldm"])
def test_kohya_file_through_diffusers_matches_todays_fusion(demo_model_dir, tmp_path, spelling, no_hand_fusion):
    parts = fresh_parts(demo_model_dir)
    layers = kohya_layers(parts, spelling)
    assert len(layers) > 100 and any("input_blocks" in n for n in layers) == (spelling == "ldm")
    tensors = random_lora(layers, seed=1)
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path))
    expected = reference_weights(layers, [(tensors, 0.7)])

    [report] = fuse_loras(parts.unet, parts.text_encoder, [(str(path), 0.7, read_lora(path))])

    assert_fused(layers, expected)
    assert report.to_dict() == {"path": str(path), "weight": 0.7, "layers": len(layers), "unmatched": 0}
    assert_plain_modules(parts)
    shared = "up_blocks.1.resnets.0.conv1"
    assert parts.image_unet.get_submodule(shared) is parts.unet.get_submodule(shared)


def test_several_files_and_a_diffusers_format_file_with_motion_layers(demo_model_dir, tmp_path, no_hand_fusion):
    parts = fresh_parts(demo_model_dir)
    layers = kohya_layers(parts, "diffusers")
    first = random_lora(layers, seed=2)
    # The same layers in diffusers' peft spelling, plus motion-module layers (an AnimateDiff motion LoRA).
    peft_layers = {"unet." + _diffusers_path(parts.unet, m): m for n, m in layers.items() if n.startswith("lora_unet_")}
    peft_layers.update({"text_encoder." + n: m for n, m in parts.text_encoder.named_modules()
                        if isinstance(m, nn.Linear)})
    peft_layers.update({"unet." + n: m for n, m in parts.unet.named_modules()
                        if "motion_modules" in n and n.endswith(("attn1.to_q", "proj_out"))})
    second = random_lora(peft_layers, seed=3, peft=True)
    paths = [tmp_path / "kohya.safetensors", tmp_path / "pytorch_lora_weights.safetensors"]
    save_file(first, str(paths[0]))
    save_file(second, str(paths[1]))
    all_layers = {**layers, **peft_layers}
    expected = reference_weights(layers, [(first, 0.8)])
    expected.update(reference_weights(peft_layers, [(second, -0.5)], peft=True))
    for name, module in layers.items():  # the layers both files change: both deltas, in order
        other = next(k for k, m in peft_layers.items() if m is module)
        expected[name] = expected[name] + (expected[other] - module.weight.detach())
        expected[other] = expected[name]

    reports = fuse_loras(parts.unet, parts.text_encoder,
                         [(str(p), w, read_lora(p)) for p, w in zip(paths, (0.8, -0.5))])

    assert_fused(all_layers, expected)
    assert [r.layers for r in reports] == [len(layers), len(peft_layers)]
    assert_plain_modules(parts)


def test_weight_zero_through_diffusers_changes_nothing(demo_model_dir, tmp_path):
    parts = fresh_parts(demo_model_dir)
    layers = kohya_layers(parts, "diffusers")
    path = tmp_path / "kohya.safetensors"
    save_file(random_lora(layers, seed=4), str(path))
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    [report] = fuse_loras(parts.unet, parts.text_encoder, [(str(path), 0.0, read_lora(path))])
    assert report.weight == 0.0 and report.layers == len(layers)
    assert all(torch.equal(before[k], v) for k, v in parts.unet.state_dict().items())


def test_kohya_files_diffusers_misreads_are_fused_by_our_code(demo_model_dir, monkeypatch):
    """Text-encoder attention without out_proj, and kohya-spelled motion-module layers: our fusion, same math."""
    calls = []
    monkeypatch.setattr(lora, "_fuse_with_diffusers", lambda *a: calls.append(a) or True)
    parts = fresh_parts(demo_model_dir)
    targets = lora_targets(parts.unet, parts.text_encoder)
    for names in (["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_encoder_layers_1_mlp_fc1"],
                  ["lora_unet_down_blocks_0_motion_modules_0_proj_in"]):
        layers = {name: targets[name] for name in names}
        tensors = random_lora(layers, seed=5)
        expected = reference_weights(layers, [(tensors, 1.5)])
        fuse_loras(parts.unet, parts.text_encoder, [("file.safetensors", 1.5, tensors)])
        assert_fused(layers, expected)
    assert calls == []


def test_a_lora_for_another_model_fails_in_one_line_before_any_change(demo_model_dir, tmp_path):
    parts = fresh_parts(demo_model_dir)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    layer = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    good = random_lora(kohya_layers(parts, "diffusers"), seed=6)
    sdxl_like = {f"{layer}.lora_A.weight": torch.ones(4, 2048), f"{layer}.lora_B.weight": torch.ones(32, 4)}
    path = tmp_path / "sdxl.safetensors"
    save_file(sdxl_like, str(path))
    with pytest.raises(LoraFileError, match=f"{path}: layer '{layer}' does not fit this model") as info:
        fuse_loras(parts.unet, parts.text_encoder, [("good.safetensors", 1.0, good), (str(path), 1.0, sdxl_like)])
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in parts.unet.state_dict().items())
    foreign = {"unet.nowhere.lora_A.weight": torch.ones(4, 8), "unet.nowhere.lora_B.weight": torch.ones(8, 4)}
    with pytest.raises(LoraFileError, match="none of its 1 LoRA layers match"):
        fuse_loras(parts.unet, parts.text_encoder, [("x.safetensors", 1.0, foreign)])
    with pytest.raises(LoraFileError, match="no LoRA tensors"):
        fuse_loras(parts.unet, parts.text_encoder, [("x.safetensors", 1.0, {"model.weight": torch.ones(2)})])
    assert_plain_modules(parts)


def test_missing_peft_is_one_line_before_model_work(demo_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "kohya.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.ones(1, 4, 3, 3)}, str(path))
    real_find_spec = lora.importlib.util.find_spec
    monkeypatch.setattr(lora.importlib.util, "find_spec", lambda name: None if name == "peft" else real_find_spec(name))
    monkeypatch.setattr("i4vgen_ext.backbones.diffusers_backbone.load_model_parts",
                        lambda *a, **k: pytest.fail("model work before the peft check"))
    with pytest.raises(MissingDependencyError, match="needs peft"):
        DiffusersBackbone.load(str(demo_model_dir), loras=[(str(path), 1.0)])

"""Selective Feature Injection on the tiny demo model: recording, Eq. 11 injection, exact restoration, EVS wiring."""
from __future__ import annotations

import json

import pytest
import torch

from i4vgen_ext.backbones.feature_injection import QKVProcessor, select_layers, spatial_self_attention_layers
from i4vgen_ext.core.evs import EVSSettings, draw_evs_noises, evs_refine
from i4vgen_ext.core.settings import SettingsError

pytestmark = pytest.mark.standalone

PROMPT = "a photo of a cat"
SHAPE = (1, 4, 2, 8, 8)  # two frames of 8x8 latents


def latent(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def den(demo_backbone):
    return demo_backbone.denoiser(PROMPT, "blurry", 7.5, 10)


def processors(unet) -> dict:
    return dict(unet.attn_processors)


def same_objects(before: dict, after: dict) -> bool:
    return before.keys() == after.keys() and all(after[k] is v for k, v in before.items())


class AttentionOutputs:
    """Forward hooks catching every spatial attn1 output and the processor that produced it."""

    def __init__(self, unet):
        self.outputs, self.kinds = {}, {}
        layers = spatial_self_attention_layers(unet)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.outputs[name] = output.clone()
            self.kinds[name] = type(module.processor)
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_layer_presets_on_the_sd15_topology(demo_backbone):
    unet = demo_backbone.unet
    assert len(spatial_self_attention_layers(unet)) == 16  # 2 + 2 + 2 down, 1 mid, 3 + 3 + 3 up; no motion module
    deep = select_layers(unet, "deep")
    assert sorted({n.split(".attentions")[0] for n in deep}) == ["down_blocks.2", "mid_block", "up_blocks.1"]
    shallow = select_layers(unet, "shallow")
    assert sorted({n.split(".attentions")[0] for n in shallow}) == ["down_blocks.0", "up_blocks.3"]
    assert select_layers(unet, "mid_block, up_blocks.1.attentions.2") == [
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1", "mid_block.attentions.0.transformer_blocks.0.attn1"]
    with pytest.raises(ValueError, match="up_blocks.0"):
        select_layers(unet, "up_blocks.0")  # the lowest-resolution up block has no spatial attention


def test_recording_keeps_predictions_and_processors_and_files_by_timestep(den, demo_backbone):
    unet = demo_backbone.unet
    before = processors(unet)
    x = latent(0)
    mm_calls = demo_backbone.motion_module_calls
    plain = den.predict_noise(x, 501, video=True)
    per_call = demo_backbone.motion_module_calls - mm_calls
    calls, mm_calls = den.unet_calls, demo_backbone.motion_module_calls
    with den.record_attention("deep", timesteps=[501]) as store, AttentionOutputs(unet) as seen:
        recorded = den.predict_noise(x, 501, video=True)
        den.predict_noise(x, 301, video=True)  # not kept: 301 is not asked for
        with store.filed_under(501):
            den.predict_noise(latent(1), 301, video=True)  # filed under 501: replaces the first record
        assert same_objects(before, processors(unet))  # installed only for the duration of a call
    assert torch.equal(recorded, plain)  # recording changes nothing
    assert den.unet_calls == calls + 3 and demo_backbone.motion_module_calls - mm_calls == 3 * per_call > 0
    assert store.timesteps == [501] and {layer for _, layer in store.records} == set(select_layers(unet, "deep"))
    assert all(seen.kinds[n] is QKVProcessor for n in store.layers)
    record = store.get(501, "mid_block.attentions.0.transformer_blocks.0.attn1")
    assert record.query.shape[0] == 2 * 2  # [uncond, cond] x 2 frames, per batch row as computed
    assert store.nbytes > 0
    assert same_objects(before, processors(unet))


def test_gamma_one_in_all_layers_reproduces_the_recorded_attention(den, demo_backbone):
    unet = demo_backbone.unet
    x_a, x_b = latent(2), latent(3)
    with den.record_attention("all") as store, AttentionOutputs(unet) as at_a:
        eps_a = den.predict_noise(x_a, 401, video=True)
    with den.inject_attention(store, 1.0, "all"), AttentionOutputs(unet) as injected:
        again = den.predict_noise(x_a, 401, video=True)
        eps_b = den.predict_noise(x_b, 401, video=True)
    assert torch.equal(again, eps_a)  # the injected call at the recorded input is the recording's call, exactly
    for name in store.layers:  # at another input every spatial self-attention still outputs what was recorded
        assert torch.equal(injected.outputs[name], at_a.outputs[name])
    assert not torch.equal(eps_b, eps_a)  # the rest of the network sees x_b
    assert not torch.equal(eps_b, den.predict_noise(x_b, 401, video=True))


def test_gamma_and_layers_change_the_output(den):
    x_a, x_b = latent(4), latent(5)
    with den.record_attention("all") as store:
        den.predict_noise(x_a, 401, video=True)
    free = den.predict_noise(x_b, 401, video=True)
    outputs = {}
    for gamma, layers in ((0.0, "deep"), (0.5, "deep"), (0.8, "deep"), (0.8, "shallow")):
        with den.inject_attention(store, gamma, layers):
            outputs[gamma, layers] = den.predict_noise(x_b, 401, video=True)
    assert not torch.equal(outputs[0.5, "deep"], outputs[0.8, "deep"])
    assert not torch.equal(outputs[0.8, "deep"], outputs[0.8, "shallow"])
    assert not torch.equal(outputs[0.0, "deep"], free)  # gamma = 0 still swaps K and V


def test_image_mode_is_unaffected(den):
    frames = latent(6, (2, 4, 8, 8))
    plain = den.predict_noise(frames, 401, video=False)
    with den.record_attention("all") as store:
        assert torch.equal(den.predict_noise(frames, 401, video=False), plain)
    assert store.records == {}
    with den.record_attention("all") as store:
        den.predict_noise(latent(7), 401, video=True)
    with den.inject_attention(store, 0.8, "all"):
        assert torch.equal(den.predict_noise(frames, 401, video=False), plain)


def test_processors_are_restored_exactly_after_errors(den, demo_backbone):
    unet, image_unet = demo_backbone.unet, demo_backbone.image_unet
    before, before_image = processors(unet), processors(image_unet)
    with den.record_attention("deep") as store:
        den.predict_noise(latent(8), 401, video=True)
    with pytest.raises(LookupError, match="no recorded attention for timestep 301"):
        with den.inject_attention(store, 0.8, "deep"):
            den.predict_noise(latent(8), 301, video=True)  # fails inside the UNet forward
    with pytest.raises(KeyboardInterrupt):
        with den.inject_attention(store, 0.8, "deep"):
            den.predict_noise(latent(8), 401, video=True)
            raise KeyboardInterrupt
    assert same_objects(before, processors(unet)) and same_objects(before_image, processors(image_unet))
    with den.record_attention("deep"):  # the context is free again after the errors
        with pytest.raises(RuntimeError, match="already active"):
            with den.inject_attention(store, 0.8, "deep"):
                pass
    with pytest.raises(ValueError, match="did not record"):
        den.inject_attention(store, 0.8, "shallow")
    with pytest.raises(ValueError, match="gamma"):
        den.inject_attention(store, 1.2, "deep")


def test_a_no_cfg_record_serves_both_cfg_halves(den, demo_backbone):
    unet = demo_backbone.unet
    inverter = demo_backbone.denoiser(PROMPT, "blurry", 1.0, 10)
    x = latent(9)
    with inverter.record_attention("all") as store, AttentionOutputs(unet) as recorded:
        inverter.predict_noise(x, 401, video=True)
    with den.inject_attention(store, 1.0, "all"), AttentionOutputs(unet) as injected:
        den.predict_noise(latent(10), 401, video=True)
    for name in store.layers:  # rows: [uncond f0, f1, cond f0, f1] <- the record's [f0, f1] twice
        # (equal up to float rounding: kernels sum in another order for 4 rows than for 2)
        torch.testing.assert_close(injected.outputs[name], recorded.outputs[name].repeat(2, 1, 1), rtol=1e-5,
                                   atol=1e-6)
    # The inverter's recording never reached the other denoiser's calls, and vice versa.
    with inverter.record_attention("all") as other:
        den.predict_noise(x, 401, video=True)
    assert other.records == {}


def test_evs_with_sfi_costs_the_same_calls_and_changes_the_result(demo_backbone, den):
    video = latent(11)
    noises = draw_evs_noises(torch.Generator().manual_seed(0), SHAPE)
    inverter = demo_backbone.denoiser(PROMPT, "blurry", 1.0, 10)
    before = processors(demo_backbone.unet)
    results = {}
    for name, sfi in (("inversion", False), ("sfi", True)):
        settings = EVSSettings(inversion=True, sfi=sfi)  # S = 10: 4 T2I steps, t_V = 201, n_V = 3
        results[name] = evs_refine(den, video, noises, settings, inversion_denoiser=inverter)
    assert results["inversion"].unet_calls == results["sfi"].unet_calls == {
        "image": 5, "video": 3, "inversion": 3, "total": 11}
    assert torch.equal(results["inversion"].block_input, results["sfi"].block_input)
    assert not torch.equal(results["inversion"].block_output, results["sfi"].block_output)
    assert same_objects(before, processors(demo_backbone.unet))
    with pytest.raises(SettingsError, match="evs_sfi_layers = 'up_blocks.7'"):
        evs_refine(den, video, noises, EVSSettings(inversion=True, sfi=True, sfi_layers="up_blocks.7"),
                   inversion_denoiser=inverter)


def test_cli_refine_with_sfi(tmp_path, demo_model_dir, monkeypatch):
    from i4vgen_ext.standalone.cli import main

    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))
    out = tmp_path / "out"
    code = main(["generate", "--mode", "plain+evs", "--prompt", "a cat", "--frames", "2", "--steps", "7",
                 "--seed", "3", "--out", str(out), "--quiet", "--evs-inversion", "--evs-sfi", "--evs-sfi-gamma",
                 "0.5", "--evs-sfi-layers", "shallow"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    evs = run["evs"]["settings"]
    assert (evs["inversion"], evs["sfi"], evs["sfi_gamma"], evs["sfi_layers"]) == (True, True, 0.5, "shallow")
    assert {k: v for k, v in run["unet_calls"].items() if k.startswith("evs_")} == {
        "evs_image": 3, "evs_video": 2, "evs_inversion": 2}

def test_cli_rejects_sfi_without_inversion(tmp_path, capsys):
    from i4vgen_ext.standalone.cli import main

    code = main(["generate", "--mode", "plain+evs", "--prompt", "a cat", "--out", str(tmp_path / "x"), "--quiet",
                 "--evs-sfi"])
    assert code == 2 and "evs_sfi = True" in capsys.readouterr().err and not (tmp_path / "x").exists()

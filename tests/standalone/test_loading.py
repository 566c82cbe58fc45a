"""Model sources: the embedded demo model, diffusers folders, A1111 single files + AnimateDiff mm files (offline)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from i4vgen_ext.backbones import configs
from i4vgen_ext.backbones.checkpoint_io import UntrustedPickleError, read_checkpoint
from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone
from i4vgen_ext.backbones.tiny import (
    DEMO_NAME,
    build_demo_model,
    ensure_demo_model,
    read_demo_marker,
    weights_digest,
    write_single_file_fixtures,
)

pytestmark = pytest.mark.standalone


class LightningCallbackStub:
    """Stands in for the trainer objects Lightning pickles next to the weights."""


def weights(folder: Path, component: str) -> dict:
    return load_file(str(next((folder / component).glob("*.safetensors"))))


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def assert_backbone_holds_demo_weights(backbone: DiffusersBackbone, demo: Path) -> None:
    assert_same_tensors(backbone.image_unet.state_dict(), weights(demo, "unet"))
    assert_same_tensors(backbone.vae.state_dict(), weights(demo, "vae"))
    assert_same_tensors(backbone.text_encoder.state_dict(), weights(demo, "text_encoder"))
    motion = {k: v for k, v in backbone.unet.state_dict().items() if "motion_modules" in k}
    assert_same_tensors(motion, weights(demo, "motion_adapter"))


# ---- the embedded demo model -----------------------------------------------------------------------------
def test_demo_build_is_deterministic_and_labelled(tmp_path, demo_model_dir):
    rebuilt = build_demo_model(tmp_path / "again")
    marker = read_demo_marker(demo_model_dir)
    assert marker["demo"] is True and marker["name"] == DEMO_NAME
    assert weights_digest(rebuilt) == weights_digest(demo_model_dir) == marker["weights_sha256"]
    # The digest sees a single changed weight.
    unet_file = next((rebuilt / "unet").glob("*.safetensors"))
    tensors = load_file(str(unet_file))
    tensors["conv_in.bias"] = tensors["conv_in.bias"] + 1e-3
    save_file(tensors, str(unet_file))
    assert weights_digest(rebuilt) != marker["weights_sha256"]


def test_ensure_demo_model_builds_once_atomically(demo_cache_root, demo_model_dir):
    marker = demo_model_dir / "i4vgen_demo.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_model(demo_cache_root) == demo_model_dir
    assert marker.stat().st_mtime_ns == stamp
    assert demo_model_dir.name.startswith("demo-v1-")  # demo-v1-<tokenizer>-<cache key>
    assert [p.name for p in demo_cache_root.iterdir()] == [demo_model_dir.name]  # no staging folder left behind


def test_ensure_demo_model_rebuilds_an_incomplete_folder(tmp_path, monkeypatch, demo_model_dir):
    """Was: refused ("delete it to rebuild"). Now rebuilt beside it and renamed into place (see test_faults.py)."""
    from i4vgen_ext.backbones import tiny

    (tmp_path / demo_model_dir.name / "unet").mkdir(parents=True)
    monkeypatch.setattr(tiny, "build_demo_model", lambda staging: shutil.copytree(demo_model_dir, staging,
                                                                                  dirs_exist_ok=True))
    assert ensure_demo_model(tmp_path) == tmp_path / demo_model_dir.name
    assert read_demo_marker(tmp_path / demo_model_dir.name) == read_demo_marker(demo_model_dir)


def test_ensure_demo_model_loses_a_race_gracefully(tmp_path, monkeypatch, demo_model_dir):
    """Another process renames its finished build into place while ours is building: ours is discarded."""
    from i4vgen_ext.backbones import tiny

    def build_while_another_process_finishes(staging):
        shutil.copytree(demo_model_dir, staging, dirs_exist_ok=True)
        shutil.copytree(demo_model_dir, tmp_path / demo_model_dir.name)
        return staging

    monkeypatch.setattr(tiny, "build_demo_model", build_while_another_process_finishes)
    assert ensure_demo_model(tmp_path) == tmp_path / demo_model_dir.name
    assert [p.name for p in tmp_path.iterdir()] == [demo_model_dir.name]


def test_no_model_means_the_demo_model(monkeypatch, demo_cache_root, demo_model_dir):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_cache_root))
    backbone = DiffusersBackbone.load()
    assert backbone.description["demo"] is True and backbone.description["kind"] == "demo"
    assert backbone.description["path"] == str(demo_model_dir)
    assert backbone.description["name"] == DEMO_NAME


# ---- diffusers folders --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_only_folder(demo_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd-only") / "sd"
    shutil.copytree(demo_model_dir, folder, ignore=shutil.ignore_patterns("motion_adapter", "i4vgen_demo.json"))
    return folder


def test_sd_folder_plus_motion_adapter_folder(sd_only_folder, demo_model_dir):
    backbone = DiffusersBackbone.load(str(sd_only_folder), str(demo_model_dir / "motion_adapter"))
    assert backbone.description["kind"] == "sd-folder" and "demo" not in backbone.description
    assert backbone.description["motion_module_version"] == "v2"
    assert_backbone_holds_demo_weights(backbone, demo_model_dir)


def test_sd_folder_without_motion_module_names_the_option(sd_only_folder):
    with pytest.raises(ValueError, match="--motion-module"):
        DiffusersBackbone.load(str(sd_only_folder))


def test_animatediff_pipeline_folder(demo_backbone, demo_model_dir, tmp_path):
    from diffusers import AnimateDiffPipeline

    from i4vgen_ext.backbones.loading import load_motion_adapter

    b = demo_backbone
    adapter, _ = load_motion_adapter(demo_model_dir / "motion_adapter")
    pipe = AnimateDiffPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                               motion_adapter=adapter, scheduler=None)
    pipe.save_pretrained(tmp_path / "ad")
    assert json.loads((tmp_path / "ad" / "unet" / "config.json").read_text())["_class_name"] == "UNetMotionModel"
    loaded = DiffusersBackbone.load(str(tmp_path / "ad"))
    assert loaded.description["kind"] == "animatediff-folder"
    assert_backbone_holds_demo_weights(loaded, demo_model_dir)
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours, theirs = loaded.denoiser("a cat", "", 7.5, 10), b.denoiser("a cat", "", 7.5, 10)
    for latents, video in ((x, True), (x[:, :, 0], False)):
        expected = theirs.predict_noise(latents, 901, video=video)
        assert torch.equal(ours.predict_noise(latents, 901, video=video), expected)


def test_bfloat16_load_of_an_fp16_variant_folder_keeps_latents_fp32(demo_model_dir, tmp_path):
    folder = tmp_path / "variant"
    shutil.copytree(demo_model_dir, folder)
    for weights_file in (folder / "unet").glob("*.safetensors"):  # as hub snapshots that only ship fp16 files
        weights_file.rename(weights_file.with_name(weights_file.stem + ".fp16.safetensors"))
    backbone = DiffusersBackbone.load(str(folder), dtype=torch.bfloat16)
    assert {p.dtype for p in backbone.unet.parameters()} == {torch.bfloat16}
    assert backbone.description["dtype"] == "bfloat16"
    denoiser = backbone.denoiser("a cat", "", 7.5, 2)
    video = denoiser.denoise(None, torch.randn(1, 4, 2, 8, 8), steps=2, video=True, stage="video")
    assert video.dtype == torch.float32 and torch.isfinite(video).all()
    assert backbone.encode_image(backbone.decode_video(video)[0]).dtype == torch.float32


def test_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        DiffusersBackbone.load(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        DiffusersBackbone.load(str(tmp_path / "missing.safetensors"), str(tmp_path / "mm.ckpt"))


# ---- single files ----------------------------------------------------------------------------------------
def test_single_file_checkpoint_and_mm_ckpt_round_trip_bit_identical(single_file_fixtures, demo_model_dir):
    checkpoint, mm = single_file_fixtures
    assert checkpoint.suffix == ".safetensors" and mm.name.startswith("mm_") and mm.suffix == ".ckpt"
    keys = load_file(str(checkpoint))
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    original = torch.load(mm, weights_only=True)
    assert any(".temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe" in k for k in original)

    backbone = DiffusersBackbone.load(str(checkpoint), str(mm))
    assert backbone.description["kind"] == "single-file"
    assert backbone.description["architecture"] == "i4vgen-tiny"
    assert backbone.description["motion_module_version"] == "v2"
    assert_backbone_holds_demo_weights(backbone, demo_model_dir)


def test_single_file_without_motion_module_names_the_option(single_file_fixtures):
    with pytest.raises(ValueError, match="--motion-module"):
        DiffusersBackbone.load(str(single_file_fixtures[0]))


def test_lightning_ckpt_with_old_clip_layout_and_mm_safetensors(demo_model_dir, tmp_path):
    """One load covering four variants: a pickled .ckpt wrapped as {"state_dict": ...}, the text encoder in the
    old key layout without ``text_model.``, the motion module as .safetensors, and configs given explicitly."""
    checkpoint, mm = write_single_file_fixtures(demo_model_dir, tmp_path, names=("model.ckpt", "mm_tiny.safetensors"))
    state = torch.load(checkpoint, weights_only=True)
    prefix = "cond_stage_model.transformer.text_model."
    old = {(k.replace(prefix, "cond_stage_model.transformer.", 1)): v for k, v in state.items()}
    assert configs.CLIP_TOKEN_EMBEDDING not in old
    assert set(configs.rename_old_clip_layout(old)) == set(state)
    torch.save({"state_dict": old, "global_step": 1}, checkpoint)
    backbone = DiffusersBackbone.load(str(checkpoint), str(mm), single_file_config=str(demo_model_dir))
    assert backbone.description["architecture"] == "custom"
    assert_backbone_holds_demo_weights(backbone, demo_model_dir)


def test_lightning_pickle_needs_explicit_trust(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": LightningCallbackStub(), "epoch": 3}, path)
    with pytest.raises(UntrustedPickleError, match="trust_pickle"):
        read_checkpoint(path)
    assert torch.equal(read_checkpoint(path, trust_pickle=True)["w"], torch.ones(2))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 5}, tmp_path / "plain.ckpt")
    assert set(read_checkpoint(tmp_path / "plain.ckpt")) == {"w"}  # tensors only, wrapper removed


# ---- architecture detection (shapes only: meta tensors stand in for full-size weights) -------------------
def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def sd15_like(**extra) -> dict:
    return {"model.diffusion_model.input_blocks.0.0.weight": meta(320, 4, 3, 3),
            configs.CLIP_TOKEN_EMBEDDING: meta(49408, 768), **extra}


def test_sd_family_detection_and_clear_errors():
    assert configs.sd_family(sd15_like()) == "sd15"
    with pytest.raises(configs.UnsupportedCheckpointError, match="SDXL"):
        configs.sd_family(sd15_like(**{"conditioner.embedders.0.transformer.x": meta(1)}))
    with pytest.raises(configs.UnsupportedCheckpointError, match="SD2"):
        configs.sd_family(sd15_like(**{"cond_stage_model.model.token_embedding.weight": meta(1)}))
    with pytest.raises(configs.UnsupportedCheckpointError, match="inpainting"):
        configs.sd_family(sd15_like(**{"model.diffusion_model.input_blocks.0.0.weight": meta(320, 9, 3, 3)}))
    with pytest.raises(configs.UnsupportedCheckpointError, match="single_file_config"):
        configs.sd_family(sd15_like(**{"model.diffusion_model.input_blocks.0.0.weight": meta(48, 4, 3, 3)}))


def mm_like(width: int = 320, *, mid: bool, positions: int) -> dict:
    state = {}
    for level in range(4):
        base = f"down_blocks.{level}.motion_modules.0.temporal_transformer."
        state[base + "proj_in.weight"] = meta(width, width)
        state[base + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"] = meta(1, positions, width)
    if mid:
        state["mid_block.motion_modules.0.temporal_transformer.proj_in.weight"] = meta(width, width)
    return state


@pytest.mark.parametrize("mid, positions, version", [(True, 32, "v2"), (False, 24, "v1"), (False, 32, "v3")])
def test_motion_module_version_detection(mid, positions, version):
    config = configs.motion_adapter_config(mm_like(mid=mid, positions=positions))
    assert configs.motion_module_version(config) == version
    assert config["motion_max_seq_length"] == positions and config["block_out_channels"] == (320, 640, 1280, 1280)


def test_sd15_config_dir_is_written_by_code(tmp_path):
    pytest.importorskip("transformers")
    from i4vgen_ext.backbones.clip_tokenizer import find_open_clip_bpe

    if find_open_clip_bpe() is None:
        with pytest.raises(FileNotFoundError, match="open_clip_torch"):
            configs.write_config_dir_for_checkpoint(tmp_path, sd15_like())
        return
    folder = configs.write_config_dir_for_checkpoint(tmp_path, sd15_like())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"] == 768
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "linear"
    from transformers import CLIPTokenizer

    assert len(CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))) == 49408


# ---- full size (opt-in: pytest -m slow; about 10 GB of RAM) -----------------------------------------------
@pytest.mark.slow
def test_full_size_sd15_checkpoint_and_mm_v2_load_offline(tmp_path):
    """Random full-size SD1.5 + mm_sd_v15_v2 files in the original layouts load with configs written by code."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from i4vgen_ext.backbones.clip_tokenizer import find_open_clip_bpe
    from i4vgen_ext.backbones.ldm_convert import motion_adapter_to_original, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm

    if find_open_clip_bpe() is None:
        pytest.skip("a real SD1.5 checkpoint needs the CLIP vocabulary (open_clip_torch)")
    generator = torch.Generator().manual_seed(0)

    def random_weights(build) -> dict:
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items()}
        return {k: (torch.randn(s, generator=generator) * 0.02).half() for k, s in shapes.items()}

    unet = random_weights(lambda: UNet2DConditionModel(**configs.SD15_UNET))
    checkpoint = {**unet_to_ldm(unet, configs.SD15_UNET),
                  **vae_to_ldm(random_weights(lambda: AutoencoderKL(**configs.SD15_VAE)), configs.SD15_VAE),
                  **text_encoder_to_ldm(random_weights(lambda: CLIPTextModel(CLIPTextConfig(**configs.SD15_TEXT))))}
    save_file(checkpoint, str(tmp_path / "sd15.safetensors"))
    del checkpoint
    adapter = random_weights(lambda: MotionAdapter(**configs.MM_V2))
    torch.save(motion_adapter_to_original(adapter, 32), tmp_path / "mm_sd_v15_v2.ckpt")

    backbone = DiffusersBackbone.load(str(tmp_path / "sd15.safetensors"), str(tmp_path / "mm_sd_v15_v2.ckpt"),
                                      dtype=torch.bfloat16)
    assert backbone.description["architecture"] == "sd15"
    assert backbone.description["motion_module_version"] == "v2"
    assert backbone.default_size == (512, 512) and len(backbone.tokenizer) == 49408
    assert torch.equal(backbone.image_unet.conv_in.weight, unet["conv_in.weight"].to(torch.bfloat16))
    motion = backbone.unet.down_blocks[0].motion_modules[0].proj_in.weight
    assert torch.equal(motion, adapter["down_blocks.0.motion_modules.0.proj_in.weight"].to(torch.bfloat16))
    denoiser = backbone.denoiser("a cat", "", 7.5, 25)
    assert torch.isfinite(denoiser.predict_noise(torch.randn(1, 4, 2, 8, 8), 961, video=True)).all()
    assert torch.isfinite(denoiser.predict_noise(torch.randn(1, 4, 8, 8), 961, video=False)).all()

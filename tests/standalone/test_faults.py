"""Model-file faults through the CLI: one ``i4vgen: error:`` line naming the file, exit status 2, no traceback,
and, where the file can be checked cheaply, before any model work (the demo model is not even built).

Every fixture is written here, at test time, in tmp_path."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from i4vgen_ext.backbones import tiny
from i4vgen_ext.backbones.checkpoint_io import UntrustedPickleError, read_checkpoint
from i4vgen_ext.backbones.loading import load_motion_adapter
from i4vgen_ext.backbones.lora import fuse_lora, lora_targets
from i4vgen_ext.errors import LoraFileError, ModelFileError
from i4vgen_ext.standalone.cli import main

from ..cli_helpers import cli_error

pytestmark = pytest.mark.standalone

LORA_LAYER = "lora_unet_down_blocks_0_attentions_0_proj_out"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """An empty demo cache: if a check runs before model work, nothing gets built in it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("I4VGEN_CACHE", str(cache))
    return cache


def assert_no_model_work(cache: Path) -> None:
    assert not cache.exists() or not any(cache.iterdir())




def generate(tmp_path, *extra) -> list:
    return ["generate", "--prompt", "a cat", "--out", str(tmp_path / "out"), "--quiet", "--mode", "plain",
            "--seed", "1", "--frames", "2", "--steps", "1", *extra]


def small_safetensors(path: Path) -> Path:
    save_file({"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(16)}, str(path))
    return path


def truncated(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 16)
    return path


# ---- unreadable single files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["--model", "--motion-module", "--lora"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_safetensors_is_one_line_before_model_work(role, damage, tmp_path, capsys, empty_cache):
    path = tmp_path / "broken.safetensors"
    if damage == "garbage":
        garbage(path)
    else:
        truncated(small_safetensors(path))
    line = cli_error(capsys, *generate(tmp_path, role, str(path)))
    assert str(path) in line and "not a readable .safetensors file" in line
    assert {"--model": "model", "--motion-module": "motion module", "--lora": "LoRA"}[role] in line
    assert_no_model_work(empty_cache)


@pytest.mark.parametrize("role", ["--model", "--motion-module"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt"])
def test_unreadable_ckpt_is_one_line_before_model_work(role, damage, tmp_path, capsys, empty_cache):
    path = tmp_path / "broken.ckpt"
    if damage == "garbage":
        garbage(path)
    else:
        torch.save({"state_dict": {"w": torch.arange(4096, dtype=torch.float32)}}, path)
        if damage == "truncated":
            truncated(path)
        else:  # the zip directory survives, the members do not
            data = bytearray(path.read_bytes())
            data[30:300] = bytes(270)
            path.write_bytes(bytes(data))
    line = cli_error(capsys, *generate(tmp_path, role, str(path)))
    assert str(path) in line
    assert any(words in line for words in ("not a PyTorch checkpoint", "truncated or damaged"))
    assert "pickles Python objects" not in line  # damage is not mistaken for an untrusted pickle
    assert_no_model_work(empty_cache)


def test_read_checkpoint_raises_model_file_errors(tmp_path):
    with pytest.raises(ModelFileError, match="garbage.ckpt is not a PyTorch checkpoint"):
        read_checkpoint(garbage(tmp_path / "garbage.ckpt"))
    with pytest.raises(ModelFileError, match="cut.safetensors is not a readable .safetensors"):
        read_checkpoint(truncated(small_safetensors(tmp_path / "cut.safetensors")))


# ---- pickles ---------------------------------------------------------------------------------------------------
def lightning_mm(single_file_fixtures, tmp_path) -> Path:
    """The demo motion module wrapped as Lightning pickles it: weights plus a non-tensor object."""
    mm = torch.load(single_file_fixtures[1], weights_only=True)
    path = tmp_path / "mm_lightning.ckpt"
    torch.save({"state_dict": mm, "hyper_parameters": argparse.Namespace(lr=1e-4), "epoch": 3}, path)
    return path


def test_untrusted_pickle_is_one_line_naming_the_file_and_the_flag(single_file_fixtures, tmp_path, capsys,
                                                                    empty_cache):
    path = lightning_mm(single_file_fixtures, tmp_path)
    line = cli_error(capsys, *generate(tmp_path, "--motion-module", str(path)))
    assert str(path) in line and "--trust-pickle" in line and "trusted" in line.lower()
    assert "argparse.Namespace" in line  # what it pickles besides tensors
    assert_no_model_work(empty_cache)
    with pytest.raises(UntrustedPickleError) as caught:  # still its own class, now also a ValueError
        read_checkpoint(path)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RuntimeError)


def test_trust_pickle_loads_and_says_which_files(single_file_fixtures, demo_model_dir, tmp_path, capsys,
                                                 monkeypatch, caplog):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))
    path = lightning_mm(single_file_fixtures, tmp_path)
    with caplog.at_level(logging.WARNING, logger="i4vgen"):
        assert main(generate(tmp_path, "--motion-module", str(path), "--trust-pickle")) == 0
    unsafe = [r.getMessage() for r in caplog.records if "full unpickler" in r.getMessage()]
    assert len(unsafe) == 1 and str(path) in unsafe[0] and "--trust-pickle" in unsafe[0]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model"]["motion_module"] == str(path)
    # A file the safe loader opens is not reported, flag or not.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="i4vgen"):
        read_checkpoint(single_file_fixtures[1], trust_pickle=True)
    assert not [r for r in caplog.records if "full unpickler" in r.getMessage()]


# ---- files in the wrong role -----------------------------------------------------------------------------------
def test_sd_checkpoint_as_motion_module_names_the_file(single_file_fixtures, tmp_path, capsys, empty_cache):
    checkpoint = single_file_fixtures[0]
    line = cli_error(capsys, *generate(tmp_path, "--motion-module", str(checkpoint)))
    assert str(checkpoint) in line and "is a Stable Diffusion checkpoint, not an AnimateDiff motion module" in line
    assert_no_model_work(empty_cache)
    # The library path (no CLI pre-check) names it too, and so does a .ckpt copy.
    copy = tmp_path / "sd.ckpt"
    torch.save(read_checkpoint(checkpoint), copy)
    for source in (checkpoint, copy):
        with pytest.raises(ModelFileError, match=f"motion module {source}.* Stable Diffusion checkpoint"):
            load_motion_adapter(source)


def test_motion_module_as_model_names_the_file(single_file_fixtures, tmp_path, capsys, empty_cache):
    mm = single_file_fixtures[1]
    line = cli_error(capsys, *generate(tmp_path, "--model", str(mm)))
    assert str(mm) in line and "is an AnimateDiff motion module" in line and "--motion-module" in line


def test_other_weights_as_motion_module_names_the_file(tmp_path, capsys, empty_cache):
    path = small_safetensors(tmp_path / "weights.safetensors")
    with pytest.raises(ModelFileError, match=f"motion module {path}: no AnimateDiff motion modules"):
        load_motion_adapter(path)


# ---- LoRA shapes -----------------------------------------------------------------------------------------------
def mismatched_lora(path: Path, rank: int = 4) -> Path:
    save_file({f"{LORA_LAYER}.lora_down.weight": torch.ones(rank, 999, 1, 1),
               f"{LORA_LAYER}.lora_up.weight": torch.ones(7, rank, 1, 1),
               f"{LORA_LAYER}.alpha": torch.tensor(float(rank))}, str(path))
    return path


def test_lora_with_wrong_shapes_names_the_file_and_the_layer(demo_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))
    path = mismatched_lora(tmp_path / "sdxl_style.safetensors")
    line = cli_error(capsys, *generate(tmp_path, "--lora", f"{path}:0.8"))
    assert str(path) in line and LORA_LAYER in line and "does not fit this model" in line


def test_lora_shape_check_runs_before_any_weight_changes(demo_model_dir):
    from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone

    backbone = DiffusersBackbone.load(str(demo_model_dir))
    targets = lora_targets(backbone.unet, backbone.text_encoder)
    good = "lora_unet_down_blocks_0_attentions_0_proj_in"
    weight = targets[good].weight
    before = weight.detach().clone()
    state = {f"{good}.lora_down.weight": torch.ones(2, *weight.shape[1:]),
             f"{good}.lora_up.weight": torch.ones(weight.shape[0], 2, *([1] * (weight.ndim - 2))),
             f"{LORA_LAYER}.lora_down.weight": torch.ones(2, 999),
             f"{LORA_LAYER}.lora_up.weight": torch.ones(3, 2)}
    with pytest.raises(LoraFileError, match=f"my.safetensors: layer '{LORA_LAYER}' does not fit"):
        fuse_lora(targets, state, 1.0, path="my.safetensors")
    assert torch.equal(weight, before)


# ---- the demo model's cache ------------------------------------------------------------------------------------
def test_incomplete_demo_cache_is_rebuilt_atomically(tmp_path, monkeypatch, demo_model_dir):
    built = []

    def build(staging):
        built.append(Path(staging))
        assert Path(staging).parent == tmp_path  # beside the final folder (same file system: rename is atomic)
        shutil.copytree(demo_model_dir, staging, dirs_exist_ok=True)

    monkeypatch.setattr(tiny, "build_demo_model", build)
    final = tmp_path / demo_model_dir.name
    (final / "unet").mkdir(parents=True)
    (final / "unet" / "half-written.safetensors").write_bytes(b"\0" * 10)
    assert tiny.ensure_demo_model(tmp_path) == final
    assert tiny.is_demo_model(final) and not (final / "unet" / "half-written.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no staging or stale folder left
    # A plain file in its place is replaced the same way; a complete build is then reused as it is.
    shutil.rmtree(final)
    final.write_text("not a model")
    assert tiny.ensure_demo_model(tmp_path) == final and tiny.is_demo_model(final)
    assert tiny.ensure_demo_model(tmp_path) == final and len(built) == 2


def test_demo_cache_is_keyed_on_the_tokenizer(tmp_path, monkeypatch, demo_model_dir):
    """A cache built where open_clip's CLIP vocabulary is installed is not reused where it is not (and back)."""
    from i4vgen_ext.backbones import clip_tokenizer

    with_bpe = tiny.demo_cache_key()
    cache = tmp_path / "cache"
    shutil.copytree(demo_model_dir, cache / demo_model_dir.name)
    real_bpe = clip_tokenizer.find_open_clip_bpe()
    for module in (tiny, clip_tokenizer):
        monkeypatch.setattr(module, "find_open_clip_bpe", lambda: None)
    without_bpe = tiny.demo_cache_key()
    assert without_bpe["tokenizer"] == "byte-level" and without_bpe["vocab_size"] == 514
    byte_level = tiny.ensure_demo_model(cache)
    assert byte_level.name == tiny.demo_folder_name(without_bpe) != tiny.demo_folder_name(with_bpe)
    assert json.loads((byte_level / "text_encoder" / "config.json").read_text())["vocab_size"] == 514
    assert tiny.read_demo_marker(byte_level)["cache_key"] == without_bpe
    if real_bpe is not None:
        assert with_bpe["tokenizer"] == "clip-bpe" and with_bpe["vocab_size"] == 49408
        assert sorted(p.name for p in cache.iterdir()) == sorted([demo_model_dir.name, byte_level.name])
        monkeypatch.undo()
        assert tiny.ensure_demo_model(cache) == cache / demo_model_dir.name


def test_demo_cache_key_covers_what_changes_the_weights(monkeypatch):
    key = tiny.demo_cache_key()
    assert set(key) >= {"version", "seed", "tokenizer", "vocab_size", "configs", "libraries"}
    assert tiny.demo_cache_key(seed=1) != key
    monkeypatch.setitem(tiny.TINY_UNET, "layers_per_block", 99)
    assert tiny.demo_folder_name(tiny.demo_cache_key()) != tiny.demo_folder_name(key)

"""What a ranker never does with the files it is given: unpickle transformers weights, advise unsafe loading of a
damaged ImageReward.pt, or ask the hub when an explicit path was given. Every file is built here, tiny."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import socket
import time
import zipfile
from pathlib import Path

import pytest
import torch

from i4vgen_ext.rankers import RankerLoadError, load_ranker

from .ranker_fixtures import write_hf_cache_entry


def _chain(error: BaseException) -> str:
    """The error's text and that of every exception it was raised from (what a logged traceback would show)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return "\n".join(parts)


def _zip_with_cut_pickle(good: bytes) -> bytes:
    source, out = zipfile.ZipFile(io.BytesIO(good)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


# ImageReward.pt: damaged files are named as corrupt, never "load it with weights_only=False" ------------------------
def _damaged(kind: str, good: bytes) -> bytes:
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    return {
        "text": b"this is not a checkpoint\n" * 20,
        "random": bytes((i * 131 + 7) % 256 for i in range(512)),  # opcodes the weights-only unpickler rejects
        "empty": b"",
        "zip-cut-in-half": good[: len(good) // 2],
        "zip-cut-at-head": good[:20],
        "zip-pickle-cut": _zip_with_cut_pickle(good),  # an intact archive whose data.pkl is cut short
        "legacy-cut": legacy.getvalue()[: len(legacy.getvalue()) // 2],  # names a cut-off global
        "plain-pickle": pickle.dumps({"a": 1}),
    }[kind]


@pytest.mark.parametrize("kind", ["text", "random", "empty", "zip-cut-in-half", "zip-cut-at-head",
                                  "zip-pickle-cut", "legacy-cut", "plain-pickle"])
def test_a_damaged_checkpoint_is_called_corrupt_and_unsafe_loading_is_never_suggested(
        tmp_path: Path, imagereward_dir: Path, kind: str) -> None:
    folder = tmp_path / "damaged"
    shutil.copytree(imagereward_dir, folder)
    weights = folder / "ImageReward.pt"
    weights.write_bytes(_damaged(kind, (imagereward_dir / "ImageReward.pt").read_bytes()))
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", folder, use_cache=False)
    assert error.value.reason == "corrupt or truncated checkpoint"
    text = _chain(error.value)
    assert str(weights) in str(error.value) and "corrupt or truncated" in str(error.value)
    assert "weights_only" not in text and "more than tensors" not in text


def test_a_checkpoint_storing_an_object_is_refused_without_unsafe_advice(tmp_path: Path, imagereward_dir: Path) -> None:
    folder = tmp_path / "object"
    shutil.copytree(imagereward_dir, folder)
    torch.save({"payload": Marker(str(tmp_path / "ran"))}, folder / "ImageReward.pt")
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", folder, use_cache=False)
    assert error.value.reason == "checkpoint holds more than tensors"
    assert str(folder / "ImageReward.pt") in str(error.value) and ".open)" in str(error.value)  # the global it names
    assert "weights_only" not in _chain(error.value)
    assert not (tmp_path / "ran").exists()


# transformers rankers: safetensors only ----------------------------------------------------------------------------
class Marker:
    """Unpickling this object creates the file ``path``: proof that a pickle was loaded with code execution."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _pickled_clip(folder: Path, clip_dir: Path, marker: Path, keep_safetensors: bool) -> Path:
    shutil.copytree(clip_dir, folder)
    if not keep_safetensors:
        (folder / "model.safetensors").unlink()
    torch.save({"logit_scale": Marker(str(marker))}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_a_pickled_pytorch_model_bin_is_refused_and_never_unpickled(tmp_path: Path, clip_dir: Path, name) -> None:
    marker = tmp_path / "code-ran"
    folder = _pickled_clip(tmp_path / "bin-only", clip_dir, marker, keep_safetensors=False)
    with pytest.raises(RankerLoadError) as error:
        load_ranker(name, folder, use_cache=False)
    assert error.value.reason == "pickled weights refused (safetensors only)"
    assert "model.safetensors" in str(error.value)
    assert not marker.exists()


def test_beside_safetensors_a_pickled_bin_is_ignored(tmp_path: Path, clip_dir: Path, candidates) -> None:
    marker = tmp_path / "code-ran"
    folder = _pickled_clip(tmp_path / "both", clip_dir, marker, keep_safetensors=True)
    scores = load_ranker("pickscore", folder, use_cache=False).score("a red cat", candidates[:2])
    assert scores == load_ranker("pickscore", clip_dir, use_cache=False).score("a red cat", candidates[:2])
    assert not marker.exists()


def test_a_hub_cache_snapshot_with_only_a_pickled_bin_is_not_used(isolated_locations: Path, clip_dir: Path) -> None:
    marker = isolated_locations / "code-ran"
    folder = _pickled_clip(isolated_locations / "bin-only", clip_dir, marker, keep_safetensors=False)
    write_hf_cache_entry(isolated_locations / "hf-cache", "openai/clip-vit-large-patch14",
                         {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()})
    with pytest.raises(RankerLoadError) as error:
        load_ranker("clip", use_cache=False)
    assert error.value.reason == "weights not found offline"
    assert not marker.exists()


# An explicit path never asks the hub, online or not -----------------------------------------------------------------
@pytest.fixture
def online_but_no_hub(monkeypatch: pytest.MonkeyPatch):
    """The environment says online; every hub download function and every socket connection fails the test."""
    import huggingface_hub
    import huggingface_hub.file_download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    asked = []

    def forbidden(*args, **kwargs):
        asked.append((args, kwargs))
        pytest.fail(f"the hub was asked: {args} {kwargs}")

    for module, attr in [(huggingface_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download"),
                         (huggingface_hub.file_download, "hf_hub_download")]:
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    return asked


def _fails_fast(name: str, path: Path, reason: str) -> RankerLoadError:
    started = time.perf_counter()
    with pytest.raises(RankerLoadError) as error:
        load_ranker(name, path, use_cache=False)
    assert time.perf_counter() - started < 5, "a missing file in an explicit path must not wait for the network"
    assert error.value.reason == reason
    assert not any("hub download" in place for place in error.value.searched)
    return error.value


def test_explicit_imagereward_path_with_files_missing_fails_fast_without_the_hub(
        online_but_no_hub, tmp_path: Path, imagereward_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_fast("imagereward", empty, "ImageReward.pt not found in the ranker path")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(imagereward_dir, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    error = _fails_fast("imagereward", no_tokenizer, "tokenizer not found")
    assert "never completed from the hub" in str(error) and "offline" not in error.reason
    assert online_but_no_hub == []


def test_explicit_imagereward_path_may_use_a_tokenizer_already_in_the_hf_cache(
        online_but_no_hub, isolated_locations: Path, imagereward_dir: Path) -> None:
    folder = isolated_locations / "no-tokenizer"
    shutil.copytree(imagereward_dir, folder)
    shutil.move(str(folder / "tokenizer"), str(isolated_locations / "tok"))
    # vocab.txt only: the optional tokenizer_config.json is not fetched either
    write_hf_cache_entry(isolated_locations / "hf-cache", "bert-base-uncased",
                         {"vocab.txt": (isolated_locations / "tok" / "vocab.txt").read_bytes()})
    ranker = load_ranker("imagereward", folder, use_cache=False)
    assert ranker.files.tokenizer.parts[-3] == "models--bert-base-uncased"
    assert online_but_no_hub == []


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_explicit_clip_path_with_files_missing_fails_fast_without_the_hub(
        online_but_no_hub, tmp_path: Path, clip_dir: Path, name) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_fast(name, empty, "model files not found in the ranker path")
    model_only = tmp_path / "model-only"
    model_only.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / file, model_only / file)
    error = _fails_fast(name, model_only, "tokenizer/processor not found")
    assert "never completed from the hub" in str(error)
    assert online_but_no_hub == []


def test_the_fixture_really_is_online(online_but_no_hub) -> None:
    from i4vgen_ext.rankers.locate import is_offline

    assert not is_offline() and "HF_HUB_OFFLINE" not in os.environ

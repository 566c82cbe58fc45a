"""Where the imagereward files are looked for, in order, and what happens offline when none is there."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from i4vgen_ext.rankers import RankerLoadError, load_ranker, load_ranker_with_fallback

from .ranker_fixtures import bert_vocab, write_hf_cache_entry

PROMPT = "a red cat on the beach"


@pytest.fixture
def locations(isolated_locations: Path, imagereward_dir: Path):
    """The same tiny files in all four places (the HF-cache copy without a tokenizer/ folder, as the hub repo)."""
    root = isolated_locations
    places = {
        "explicit": root / "explicit",
        "webui": root / "webui-models" / "ImageReward",
        "home": root / "home" / ".cache" / "ImageReward",
    }
    for folder in places.values():
        shutil.copytree(imagereward_dir, folder)
    cache = root / "hf-cache"
    places["hf"] = write_hf_cache_entry(cache, "THUDM/ImageReward", {
        name: (imagereward_dir / name).read_bytes() for name in ("ImageReward.pt", "med_config.json")})
    write_hf_cache_entry(cache, "bert-base-uncased", {
        "vocab.txt": ("\n".join(bert_vocab()) + "\n").encode(), "tokenizer_config.json": b'{"do_lower_case": true}'})
    return places


def _source(**kwargs) -> Path:
    return load_ranker("imagereward", use_cache=False, **kwargs).files.weights.parent


def test_search_order_explicit_then_webui_then_home_cache_then_hf_cache(locations, monkeypatch, candidates) -> None:
    webui_models = locations["webui"].parent
    assert _source(path=locations["explicit"], webui_models_dir=webui_models) == locations["explicit"]
    assert _source(webui_models_dir=webui_models) == locations["webui"]
    monkeypatch.setenv("I4VGEN_WEBUI_MODELS_DIR", str(webui_models))  # the env var stands in for the argument
    assert _source() == locations["webui"]
    monkeypatch.delenv("I4VGEN_WEBUI_MODELS_DIR")
    assert _source(webui_models_dir=locations["webui"].parent.parent / "elsewhere") == locations["home"]
    shutil.rmtree(locations["home"])
    ranker = load_ranker("imagereward", use_cache=False)
    assert ranker.files.weights.parent == locations["hf"]
    assert ranker.files.tokenizer.parts[-3] == "models--bert-base-uncased"  # no tokenizer/ beside: the cached one
    reference = load_ranker("imagereward", locations["explicit"], use_cache=False)
    assert ranker.score(PROMPT, candidates[:3]) == reference.score(PROMPT, candidates[:3])


def test_an_explicit_path_without_the_files_does_not_fall_through(locations, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", empty)
    assert error.value.searched == [str(empty)]


def test_the_path_may_name_the_checkpoint_file(locations) -> None:
    assert _source(path=locations["explicit"] / "ImageReward.pt") == locations["explicit"]


def test_offline_without_files_names_the_ranker_every_place_searched_and_how_to_get_them(isolated_locations) -> None:
    webui_models = isolated_locations / "webui-models"
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", webui_models_dir=webui_models, offline=True)
    e = error.value
    assert e.ranker == "imagereward" and e.reason == "weights not found offline"
    home_cache = isolated_locations / "home" / ".cache" / "ImageReward"
    assert e.searched[:2] == [str(webui_models / "ImageReward"), str(home_cache)]
    assert str(isolated_locations / "hf-cache") in e.searched[2]
    message = str(e)
    assert "huggingface.co/THUDM/ImageReward" in message and "ImageReward.pt" in message
    assert all(place in message for place in e.searched)


def test_offline_without_files_falls_back_to_none_when_asked(isolated_locations, candidates) -> None:
    ranker, label = load_ranker_with_fallback("imagereward", fallback="none", offline=True)
    assert label == "none (fallback: imagereward weights not found offline)"
    assert ranker.name == "none" and ranker.score(PROMPT, candidates) == [0.0] * len(candidates)
    with pytest.raises(RankerLoadError, match="weights not found offline"):
        load_ranker_with_fallback("imagereward", fallback="error", offline=True)


def test_offline_without_a_tokenizer_is_a_specific_error(isolated_locations, imagereward_dir: Path) -> None:
    folder = isolated_locations / "no-tokenizer"
    shutil.copytree(imagereward_dir, folder)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", folder, offline=True)
    assert error.value.reason == "tokenizer not found offline"
    assert error.value.searched[-2:][0] == str(folder / "tokenizer")


def test_files_left_flat_in_the_hub_cache_by_thudms_webui_script_are_found(isolated_locations, imagereward_dir) -> None:
    cache = isolated_locations / "hf-cache"
    cache.mkdir()
    for name in ("ImageReward.pt", "med_config.json"):
        shutil.copy(imagereward_dir / name, cache / name)
    shutil.copytree(imagereward_dir / "tokenizer", cache / "tokenizer")
    assert _source() == cache


def test_online_missing_files_are_downloaded_into_the_hf_cache_and_offline_never(
        isolated_locations, imagereward_dir: Path, monkeypatch) -> None:
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, cache_dir=None, **_):
        asked.append((repo_id, filename))
        source = {"THUDM/ImageReward": imagereward_dir, "bert-base-uncased": imagereward_dir / "tokenizer"}[repo_id]
        snapshot = write_hf_cache_entry(Path(cache_dir), repo_id, {filename: (source / filename).read_bytes()})
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(RankerLoadError, match="weights not found offline"):
        load_ranker("imagereward", offline=True)  # HF_HUB_OFFLINE=1 from the test environment
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(RankerLoadError, match="weights not found offline"):
        load_ranker("imagereward", offline=True)
    assert asked == []
    ranker = load_ranker("imagereward", use_cache=False)
    assert asked == [("THUDM/ImageReward", "ImageReward.pt"), ("THUDM/ImageReward", "med_config.json"),
                     ("bert-base-uncased", "vocab.txt"), ("bert-base-uncased", "tokenizer_config.json")]
    assert ranker.files.weights.parent.parts[-3] == "models--THUDM--ImageReward"
    assert ranker.files.med_config is not None
    asked.clear()
    load_ranker("imagereward", use_cache=False)
    assert asked == []  # now cached


def test_an_explicit_checkpoint_file_may_have_another_name(locations, tmp_path: Path) -> None:
    folder = tmp_path / "renamed-file"
    shutil.copytree(locations["explicit"], folder)
    (folder / "ImageReward.pt").rename(folder / "reward-v1.pt")
    assert load_ranker("imagereward", folder / "reward-v1.pt", use_cache=False).files.weights == folder / "reward-v1.pt"

"""The clip and pickscore rankers on a tiny transformers CLIPModel with a byte-level CLIP tokenizer."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from i4vgen_ext.rankers import RankerLoadError, load_ranker, load_ranker_with_fallback

from .ranker_fixtures import write_clip_processor, write_hf_cache_entry

PROMPT = "a red cat on the beach"


def reference_scores(ranker, prompt: str, images, logit_scale: bool):
    """cos(text_projection(text pooled), visual_projection(image pooled)), times exp(logit_scale) for PickScore."""
    model = ranker.model
    tokens = ranker.tokenizer(prompt, return_tensors="pt")
    pixels = ranker.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=tokens["input_ids"]).pooler_output)
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        cos = torch.nn.functional.cosine_similarity(text, image, dim=-1)
        return (cos * model.logit_scale.exp() if logit_scale else cos).tolist()


@pytest.mark.parametrize("name, logit_scale", [("clip", False), ("pickscore", True)])
def test_scores_equal_the_reference_formula_batched_and_one_at_a_time(clip_dir: Path, candidates, name, logit_scale):
    ranker = load_ranker(name, clip_dir)
    assert ranker.name == name
    scores = ranker.score(PROMPT, candidates)
    assert len(scores) == len(candidates) and all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(reference_scores(ranker, PROMPT, candidates, logit_scale), abs=1e-5)
    assert scores == pytest.approx([ranker.score(PROMPT, [image])[0] for image in candidates], abs=1e-5)
    assert max(scores) - min(scores) > 1e-3
    assert ranker.score("(a red cat:1.2) on [the beach] <lora:x:1>", candidates) == pytest.approx(scores, abs=1e-6)


def test_pickscore_is_the_clip_cosine_times_the_logit_scale(clip_dir: Path, candidates) -> None:
    clip = load_ranker("clip", clip_dir).score(PROMPT, candidates[:3])
    pick = load_ranker("pickscore", clip_dir)
    scale = float(pick.model.logit_scale.exp())
    assert pick.score(PROMPT, candidates[:3]) == pytest.approx([c * scale for c in clip], abs=1e-5)


def test_processor_files_may_sit_in_a_processor_subfolder(clip_dir: Path, tmp_path: Path, candidates) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in clip_dir.iterdir():
        if item.name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            shutil.copy(item, folder / item.name)
    with pytest.raises(RankerLoadError, match="tokenizer/processor not found offline"):
        load_ranker("clip", folder)
    write_clip_processor(folder / "processor")
    assert load_ranker("clip", folder).score(PROMPT, candidates[:2]) == load_ranker("clip", clip_dir).score(
        PROMPT, candidates[:2])


def test_found_in_the_hf_cache_without_a_path(clip_dir: Path, isolated_locations: Path, candidates) -> None:
    files = {item.name: item.read_bytes() for item in clip_dir.iterdir() if item.is_file()}
    write_hf_cache_entry(isolated_locations / "hf-cache", "openai/clip-vit-large-patch14", files)
    assert load_ranker("clip").score(PROMPT, candidates[:2]) == load_ranker("clip", clip_dir).score(
        PROMPT, candidates[:2])


@pytest.mark.parametrize("name, repo", [("clip", "openai/clip-vit-large-patch14"),
                                        ("pickscore", "yuvalkirstain/PickScore_v1")])
def test_offline_without_files_is_a_specific_error_or_a_recorded_fallback(isolated_locations, name, repo) -> None:
    with pytest.raises(RankerLoadError) as error:
        load_ranker(name, offline=True)
    assert error.value.ranker == name and error.value.reason == "weights not found offline"
    assert f"huggingface.co/{repo}" in str(error.value) and str(isolated_locations / "hf-cache") in str(error.value)
    ranker, label = load_ranker_with_fallback(name, fallback="none", offline=True)
    assert ranker.name == "none" and label == f"none (fallback: {name} weights not found offline)"


def _rename_a_weight(folder: Path) -> None:
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file, save_file

        state = load_file(str(safetensors))
        key = next(k for k in state if k.endswith("visual_projection.weight"))
        state[key.replace("visual_projection", "image_projection")] = state.pop(key)
        save_file(state, str(safetensors), metadata={"format": "pt"})
    else:
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
        state["image_projection.weight"] = state.pop("visual_projection.weight")
        torch.save(state, folder / "pytorch_model.bin")


def test_a_renamed_weight_fails_loudly_instead_of_running_with_random_weights(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    shutil.copytree(clip_dir, folder)
    _rename_a_weight(folder)
    with pytest.raises(RankerLoadError) as error:
        load_ranker("pickscore", folder)
    assert "does not match" in str(error.value) and "visual_projection.weight" in str(error.value)


def test_a_missing_weights_file_in_the_path_is_a_specific_error(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(clip_dir / "config.json", folder / "config.json")
    with pytest.raises(RankerLoadError, match="model files not found in the ranker path"):
        load_ranker("clip", folder)

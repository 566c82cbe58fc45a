"""The imagereward ranker on a tiny checkpoint with the released file's key layout, loaded through the real loader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from i4vgen_ext.core.stages import select_anchor
from i4vgen_ext.rankers import RankerLoadError, load_ranker, load_ranker_with_fallback

from .ranker_fixtures import TinyImageReward, bert_vocab, write_imagereward
from .ranker_reference import reference_rewards, torchvision_like_transform

PROMPT = "a photo of a red corgi running on the beach"


def test_loads_the_tiny_checkpoint_strictly_through_the_real_loader(imagereward, imagereward_dir: Path) -> None:
    assert imagereward.name == "imagereward"
    assert imagereward.files.weights == imagereward_dir / "ImageReward.pt"
    loaded = imagereward.model.state_dict()
    saved = torch.load(imagereward_dir / "ImageReward.pt", weights_only=True)
    assert set(saved) - set(loaded) == {"blip.text_encoder.embeddings.position_ids"}  # the one buffer dropped
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    assert not any(p.requires_grad for p in imagereward.model.parameters())


def test_prompt_tokenisation_matches_blip(imagereward) -> None:
    vocab = {token: i for i, token in enumerate(bert_vocab())}
    tokens = imagereward.tokenizer("A Photo of a CAT", padding="max_length", truncation=True, max_length=35)
    expected = [vocab[t] for t in ("[CLS]", "a", "photo", "of", "a", "cat", "[SEP]")]
    assert tokens["input_ids"] == expected + [vocab["[PAD]"]] * (35 - len(expected))
    # BLIP's init_tokenizer adds [DEC] (bos) and [ENC] after the vocabulary
    assert imagereward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(vocab), len(vocab) + 1]


def test_preprocessing_equals_the_original_transform(candidates) -> None:
    from i4vgen_ext.rankers.imagereward_model import preprocess

    for image in candidates:
        assert torch.equal(preprocess(image, 224), torchvision_like_transform(image, 224))


def test_scores_equal_the_reference_formulas(imagereward, imagereward_dir: Path, candidates) -> None:
    state = torch.load(imagereward_dir / "ImageReward.pt", weights_only=True)
    config = json.loads((imagereward_dir / "med_config.json").read_text())
    expected = reference_rewards(state, config, imagereward.tokenizer, PROMPT, candidates)
    scores = imagereward.score(PROMPT, candidates)
    assert len(scores) == len(candidates) and all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(scores) - min(scores) > 1e-2  # the fixture separates candidates, so ranking means something


def test_batched_scores_equal_one_at_a_time(imagereward, candidates) -> None:
    batched = imagereward.score(PROMPT, candidates)
    single = [imagereward.score(PROMPT, [image])[0] for image in candidates]
    assert batched == pytest.approx(single, abs=1e-5)
    imagereward.batch_size = 3  # chunked batches give the same scores
    try:
        assert imagereward.score(PROMPT, candidates) == pytest.approx(batched, abs=1e-5)
    finally:
        imagereward.batch_size = 16


def test_scores_depend_on_the_prompt_and_ignore_webui_syntax(imagereward, candidates) -> None:
    plain = imagereward.score("a red cat", candidates[:3])
    assert imagereward.score("(a red:1.3) [cat] <lora:style:0.7>", candidates[:3]) == plain
    assert imagereward.score("a blue dog in the city at night", candidates[:3]) != pytest.approx(plain, abs=1e-4)


def test_every_image_mode_and_size_scores(imagereward) -> None:
    base = Image.effect_noise((97, 61), 40).convert("RGB")
    images = [base, base.convert("RGBA"), base.convert("L"), base.convert("P"), base.convert("LA"),
              base.convert("CMYK"), base.convert("1"), base.convert("I"), Image.new("RGB", (1, 5), "red")]
    scores = imagereward.score(PROMPT, images)
    assert len(scores) == len(images) and all(torch.isfinite(torch.tensor(scores)))


def test_scoring_runs_without_autograd_and_leaves_the_model_on_the_cpu(imagereward, candidates) -> None:
    seen = []
    hook = imagereward.model.blip.visual_encoder.register_forward_hook(
        lambda *_: seen.append(torch.is_grad_enabled()))
    try:
        with torch.enable_grad():
            imagereward.score(PROMPT, candidates[:2])
    finally:
        hook.remove()
    assert seen == [False]
    assert {p.device.type for p in imagereward.model.parameters()} == {"cpu"}


def test_empty_candidate_list_is_an_error(imagereward) -> None:
    with pytest.raises(ValueError):
        imagereward.score(PROMPT, [])


def test_best_candidate_wins_and_ties_go_to_the_lowest_index(imagereward, candidates) -> None:
    scores = imagereward.score(PROMPT, candidates)
    assert select_anchor(scores) == max(range(len(scores)), key=scores.__getitem__)
    ranker, label = load_ranker_with_fallback("none")
    assert label == "none" and select_anchor(ranker.score(PROMPT, candidates)) == 0


# ---- broken checkpoints fail loudly, with the named error ----

def _broken(tmp_path: Path, edit) -> Path:
    spec = TinyImageReward()
    state = spec.state_dict(seed=0)
    edit(state)
    return write_imagereward(tmp_path / "broken", state=state)


def test_a_renamed_key_fails_loudly(tmp_path: Path) -> None:
    def rename(state):
        state["blip.visual_encoder.blocks.0.attn.in_proj.weight"] = state.pop("blip.visual_encoder.blocks.0.attn.qkv.weight")

    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", _broken(tmp_path, rename))
    message = str(error.value)
    assert "imagereward" in message and "does not match" in message
    assert "missing key blip.visual_encoder.blocks.0.attn.qkv.weight" in message
    assert "unexpected key blip.visual_encoder.blocks.0.attn.in_proj.weight" in message


@pytest.mark.parametrize("key", ["mlp.layers.7.bias", "blip.text_proj.weight", "blip.visual_encoder.cls_token",
                                 "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"])
def test_a_missing_key_fails_loudly(tmp_path: Path, key: str) -> None:
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", _broken(tmp_path, lambda state: state.pop(key)))
    assert error.value.ranker == "imagereward" and key in str(error.value)


def test_a_reshaped_key_fails_loudly(tmp_path: Path) -> None:
    def widen(state):
        state["blip.text_encoder.encoder.layer.0.output.dense.weight"] = torch.zeros(32, 65)

    with pytest.raises(RankerLoadError, match="output.dense.weight has shape"):
        load_ranker("imagereward", _broken(tmp_path, widen))


def test_a_truncated_file_fails_with_the_named_error(tmp_path: Path, imagereward_dir: Path) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(imagereward_dir, folder)
    data = (folder / "ImageReward.pt").read_bytes()
    (folder / "ImageReward.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", folder)
    assert error.value.reason == "corrupt or truncated checkpoint"
    assert str(folder / "ImageReward.pt") in str(error.value)


class NotATensor:
    pass


def test_a_checkpoint_with_code_is_refused_by_weights_only(tmp_path: Path, imagereward_dir: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(imagereward_dir, folder)
    torch.save({"payload": NotATensor()}, folder / "ImageReward.pt")
    with pytest.raises(RankerLoadError) as error:
        load_ranker("imagereward", folder)
    assert error.value.ranker == "imagereward" and error.value.reason == "checkpoint holds more than tensors"


def test_a_tokenizer_that_does_not_fit_the_checkpoint_fails(tmp_path: Path, imagereward_dir: Path) -> None:
    folder = tmp_path / "tokenizer-mismatch"
    shutil.copytree(imagereward_dir, folder)
    vocab = folder / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(RankerLoadError, match="tokenizer does not match"):
        load_ranker("imagereward", folder)


def test_without_med_config_the_released_sizes_are_used_and_a_tiny_checkpoint_is_rejected(
        tmp_path: Path, imagereward_dir: Path) -> None:
    folder = tmp_path / "no-config"
    shutil.copytree(imagereward_dir, folder)
    (folder / "med_config.json").unlink()
    with pytest.raises(RankerLoadError, match="does not match ImageReward"):
        load_ranker("imagereward", folder)


def test_a_broken_checkpoint_becomes_a_recorded_fallback(tmp_path: Path) -> None:
    folder = _broken(tmp_path, lambda state: state.pop("mlp.layers.0.weight"))
    ranker, label = load_ranker_with_fallback("imagereward", folder, fallback="none")
    assert ranker.name == "none"
    assert label == "none (fallback: imagereward checkpoint does not match ImageReward v1.0)"
    with pytest.raises(RankerLoadError):
        load_ranker_with_fallback("imagereward", folder, fallback="error")


@pytest.mark.slow
def test_the_released_key_layout_and_sizes_build_the_full_model() -> None:
    """Full size (1.8 GB of zeros): the released key set loads strictly with the released med_config values and
    gives the 446.67 M parameters counted on the original `image-reward` 1.5 package's model."""
    from i4vgen_ext.rankers.imagereward_model import DEFAULT_MED_CONFIG, build_model

    from .ranker_fixtures import RELEASED

    assert {k: RELEASED.med_config()[k] for k in DEFAULT_MED_CONFIG} == DEFAULT_MED_CONFIG
    state = {k: torch.zeros(shape) for k, shape in RELEASED.shapes().items()}
    model = build_model(state, RELEASED.med_config(), torch.float32)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 446.67
    assert (model.config.image_size, model.config.patch_size, model.config.vision_heads) == (224, 16, 16)
    with torch.no_grad():
        reward = model(torch.randn(1, 3, 224, 224), torch.tensor([[101, 1037, 4937, 102]]), torch.ones(1, 4))
    assert reward.shape == (1,) and torch.isfinite(reward).all()

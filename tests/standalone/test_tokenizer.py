"""The demo model's tokenizer and text encoder agree, with the real CLIP vocabulary or the byte-level fallback."""
from __future__ import annotations

import json

import pytest

from i4vgen_ext.backbones import clip_tokenizer
from i4vgen_ext.backbones.configs import tiny_text_config

pytestmark = pytest.mark.standalone


def test_demo_tokenizer_matches_its_text_encoder(demo_backbone, demo_model_dir):
    tokenizer, config = demo_backbone.tokenizer, demo_backbone.text_encoder.config
    assert len(tokenizer) == config.vocab_size
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (config.bos_token_id, config.eos_token_id)
    marker = json.loads((demo_model_dir / "i4vgen_demo.json").read_text())
    assert marker["vocab_size"] == config.vocab_size
    if clip_tokenizer.find_open_clip_bpe() is not None:
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert marker["tokenizer"].startswith("CLIP BPE")


def test_without_open_clip_the_demo_tokenizer_is_byte_level(tmp_path, monkeypatch):
    from transformers import CLIPTokenizer

    monkeypatch.setattr(clip_tokenizer, "find_open_clip_bpe", lambda: None)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_tokenizer.write_clip_tokenizer(tmp_path)))
    config = tiny_text_config(len(tokenizer))
    assert len(tokenizer) == config["vocab_size"] == 514
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (config["bos_token_id"], config["eos_token_id"])
    assert tokenizer.tokenize("a cat!") == ["a</w>", "c", "a", "t</w>", "!</w>"]

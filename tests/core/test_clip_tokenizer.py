"""The offline CLIP tokenizer folder loads in transformers 4.30 (the WebUI's) and 5.x alike, with CLIP's layout."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from i4vgen_ext.backbones import clip_tokenizer
from i4vgen_ext.backbones.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode, find_open_clip_bpe, write_clip_tokenizer

transformers = pytest.importorskip("transformers")


def load(folder: Path):
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_byte_table_is_clips():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert list(table.values())[:3] == ["!", '"', "#"]  # printable bytes first, in byte order
    assert table[ord(" ")] == chr(256 + 32)  # then the rest, shifted past 255 in byte order


def test_byte_level_fallback_is_a_valid_clip_tokenizer(tmp_path):
    folder = write_clip_tokenizer(tmp_path, merges=0)
    assert sorted(p.name for p in folder.iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert (folder / "merges.txt").read_text(encoding="utf-8") == "#version: 0.2\n"
    tokenizer = load(folder)
    assert len(tokenizer) == 514
    assert tokenizer.tokenize("a cat!") == ["a</w>", "c", "a", "t</w>", "!</w>"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS_TOKEN, EOS_TOKEN, EOS_TOKEN)
    ids = tokenizer("a cat!", padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert tokenizer.model_max_length == 77 and len(ids) == 77
    assert ids[0] == 512 and ids[6:] == [513] * 71


def test_merges_are_applied_in_file_order(tmp_path):
    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\nc a\nca t</w>\nd o\n")
    folder = write_clip_tokenizer(tmp_path / "tok", merges=2, bpe_file=bpe)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab["ca"], vocab["cat</w>"], vocab[BOS_TOKEN], vocab[EOS_TOKEN]] == [512, 513, 514, 515]
    tokenizer = load(folder)
    assert tokenizer.tokenize("a cat dog") == ["a</w>", "cat</w>", "d", "o", "g</w>"]
    assert tokenizer("a cat").input_ids == [514, vocab["a</w>"], 513, 515]


def test_vocab_size_choice_and_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="514..49408"):
        write_clip_tokenizer(tmp_path / "x", vocab_size=100)
    with pytest.raises(ValueError, match="not both"):
        write_clip_tokenizer(tmp_path / "y", merges=1, vocab_size=515)
    monkeypatch.setattr(clip_tokenizer, "find_open_clip_bpe", lambda: None)
    with pytest.raises(FileNotFoundError, match="open_clip_torch"):
        write_clip_tokenizer(tmp_path / "z", vocab_size=1000)
    assert len(load(write_clip_tokenizer(tmp_path / "fallback"))) == 514  # default without the data file


@pytest.mark.skipif(find_open_clip_bpe() is None, reason="open_clip_torch (its BPE data file) is not installed")
def test_real_clip_vocabulary_reproduces_openai_ids(tmp_path):
    tokenizer = load(write_clip_tokenizer(tmp_path, require_real_vocab=True))
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(load(write_clip_tokenizer(tmp_path / "k", vocab_size=1000))) == 1000

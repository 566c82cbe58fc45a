"""Write a Hugging Face ``CLIPTokenizer`` folder offline, from the CLIP merge list inside the ``open_clip_torch``
wheel (the real ids) or, without it, a byte-level CLIP tokenizer with zero merges (514 tokens).

Details: docs/backbones.md §CLIP tokenizer.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# OpenAI CLIP keeps 49152 - 256 - 2 merges: 256 byte symbols, their 256 end-of-word twins and the 2 specials fill
# the rest of its 49408-token vocabulary.
FULL_MERGE_COUNT = 49152 - 256 - 2
FULL_VOCAB_SIZE = 49408
BYTE_LEVEL_VOCAB_SIZE = 514
OPEN_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> Dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable symbol table, in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values, symbols = printable[:], printable[:]
    shifted = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            symbols.append(256 + shifted)
            shifted += 1
    return dict(zip(byte_values, (chr(s) for s in symbols), strict=True))


def find_open_clip_bpe() -> Optional[Path]:
    """The merge file inside an installed open_clip_torch, or None (the package is located, never imported)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / OPEN_CLIP_BPE_FILE
        if candidate.is_file():
            return candidate
    return None


def read_bpe_merges(path: Path, limit: Optional[int] = None) -> List[Tuple[str, str]]:
    """The first ``limit`` (default: CLIP's 48894) merges of an open_clip/OpenAI ``bpe_simple_vocab`` file."""
    count = FULL_MERGE_COUNT if limit is None else min(limit, FULL_MERGE_COUNT)
    with gzip.open(path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    # Line 0 is the "#version" header.
    merges = [tuple(line.split()) for line in lines[1 : count + 1]]
    if len(merges) != count or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path} is not a CLIP BPE merge file ({len(merges)} usable merges, wanted {count})")
    return merges  # type: ignore[return-value]


def clip_vocab(merges: List[Tuple[str, str]]) -> Dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_tokenizer(
    directory: Path | str,
    *,
    merges: Optional[int] = None,
    vocab_size: Optional[int] = None,
    require_real_vocab: bool = False,
    bpe_file: Optional[Path] = None,
) -> Path:
    """Write a CLIP tokenizer folder and return it.

    ``merges``: how many merges to keep (default: all 48894 when the merge file is available, else 0).
    ``vocab_size``: the same choice expressed as the vocabulary size (514 + merges), e.g. to match a text encoder's
    embedding table. ``require_real_vocab``: raise instead of falling back to byte level when the file is absent.
    """
    if merges is not None and vocab_size is not None:
        raise ValueError("give merges or vocab_size, not both")
    if vocab_size is not None:
        merges = vocab_size - BYTE_LEVEL_VOCAB_SIZE
        if not 0 <= merges <= FULL_MERGE_COUNT:
            raise ValueError(
                f"a CLIP vocabulary has {BYTE_LEVEL_VOCAB_SIZE}..{FULL_VOCAB_SIZE} tokens, got {vocab_size}")
    bpe_file = bpe_file or find_open_clip_bpe()
    wanted = FULL_MERGE_COUNT if merges is None and bpe_file is not None else (merges or 0)
    if (wanted > 0 or require_real_vocab) and bpe_file is None:
        raise FileNotFoundError(
            "the CLIP merge list is needed but open_clip_torch is not installed; install it without its dependencies "
            "(pip install --no-deps open_clip_torch) to provide bpe_simple_vocab_16e6.txt.gz"
        )
    merge_list = read_bpe_merges(bpe_file, wanted) if wanted else []

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = clip_vocab(merge_list)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "\n".join(["#version: 0.2"] + [" ".join(m) for m in merge_list]) + "\n"
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **specials,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return directory

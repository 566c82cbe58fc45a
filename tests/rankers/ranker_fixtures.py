"""Tiny ranker files written at test time: an ImageReward checkpoint with the real BLIP/BERT key layout at tiny widths,
a BERT WordPiece vocabulary, and a tiny CLIPModel with a byte-level CLIP tokenizer. Nothing is downloaded.

The ImageReward state dict is built here from the key list of the released ImageReward.pt, not from the
module under test, so a renamed parameter in the module fails the strict load."""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch

WORDS = ["a", "an", "the", "of", "on", "in", "with", "and", "photo", "cat", "dog", "corgi", "beach", "running",
         "red", "blue", "green", "sunset", "city", "night", "painting", "portrait", "mountain", "lake", "forest"]


def bert_vocab() -> List[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + WORDS
    return list(dict.fromkeys(tokens))  # "a" is a letter and a word: one entry


def write_bert_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


@dataclass(frozen=True)
class TinyImageReward:
    """Sizes of an ImageReward checkpoint; the defaults are tiny, ``RELEASED`` has the sizes of the real file."""

    vision_width: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    image_size: int = 224  # the real preprocessing size; 196 patches of width 32 stay cheap
    patch: int = 16
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_ffn: int = 64
    positions: int = 40
    projection: int = 16
    vocab: int = 0  # 0: the test vocabulary + [DEC] + [ENC]

    @property
    def vocab_size(self) -> int:
        return self.vocab or len(bert_vocab()) + 2  # + [DEC] + [ENC], as BLIP's init_tokenizer adds

    def med_config(self) -> dict:
        return {
            "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": self.text_width, "initializer_range": 0.02,
            "intermediate_size": self.text_ffn, "layer_norm_eps": 1e-12, "max_position_embeddings": self.positions,
            "model_type": "bert", "num_attention_heads": self.text_heads, "num_hidden_layers": self.text_layers,
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": self.vocab_size, "encoder_width": 768,
            "add_cross_attention": True,
            # Real BLIP uses width/64 heads; a width-32 tower needs its count spelled out.
            **({} if self.vision_width == 64 * self.vision_heads else {"vision_num_attention_heads": self.vision_heads}),
        }

    def shapes(self) -> Dict[str, tuple]:
        vw, tw, grid = self.vision_width, self.text_width, self.image_size // self.patch
        s: Dict[str, tuple] = {
            "blip.visual_encoder.cls_token": (1, 1, vw),
            "blip.visual_encoder.pos_embed": (1, grid * grid + 1, vw),
            "blip.visual_encoder.patch_embed.proj.weight": (vw, 3, self.patch, self.patch),
            "blip.visual_encoder.patch_embed.proj.bias": (vw,),
        }
        for i in range(self.vision_depth):
            b = f"blip.visual_encoder.blocks.{i}."
            for name, shape in [("norm1", (vw,)), ("norm2", (vw,))]:
                s[b + name + ".weight"], s[b + name + ".bias"] = shape, shape
            for name, (o, n) in [("attn.qkv", (3 * vw, vw)), ("attn.proj", (vw, vw)),
                                 ("mlp.fc1", (4 * vw, vw)), ("mlp.fc2", (vw, 4 * vw))]:
                s[b + name + ".weight"], s[b + name + ".bias"] = (o, n), (o,)
        s["blip.visual_encoder.norm.weight"] = s["blip.visual_encoder.norm.bias"] = (vw,)
        t = "blip.text_encoder."
        s[t + "embeddings.word_embeddings.weight"] = (self.vocab_size, tw)
        s[t + "embeddings.position_embeddings.weight"] = (self.positions, tw)
        s[t + "embeddings.LayerNorm.weight"] = s[t + "embeddings.LayerNorm.bias"] = (tw,)
        for i in range(self.text_layers):
            layer = f"{t}encoder.layer.{i}."
            for block, kv in (("attention", tw), ("crossattention", vw)):
                for name, (o, n) in [("self.query", (tw, tw)), ("self.key", (tw, kv)), ("self.value", (tw, kv)),
                                     ("output.dense", (tw, tw))]:
                    s[f"{layer}{block}.{name}.weight"], s[f"{layer}{block}.{name}.bias"] = (o, n), (o,)
                s[f"{layer}{block}.output.LayerNorm.weight"] = s[f"{layer}{block}.output.LayerNorm.bias"] = (tw,)
            s[layer + "intermediate.dense.weight"], s[layer + "intermediate.dense.bias"] = (self.text_ffn, tw), (self.text_ffn,)
            s[layer + "output.dense.weight"], s[layer + "output.dense.bias"] = (tw, self.text_ffn), (tw,)
            s[layer + "output.LayerNorm.weight"] = s[layer + "output.LayerNorm.bias"] = (tw,)
        s["blip.vision_proj.weight"], s["blip.vision_proj.bias"] = (self.projection, vw), (self.projection,)
        s["blip.text_proj.weight"], s["blip.text_proj.bias"] = (self.projection, tw), (self.projection,)
        for index, (o, n) in zip((0, 2, 4, 6, 7), [(1024, tw), (128, 1024), (64, 128), (16, 64), (1, 16)]):
            s[f"mlp.layers.{index}.weight"], s[f"mlp.layers.{index}.bias"] = (o, n), (o,)
        return s

    def state_dict(self, seed: int = 0) -> Dict[str, torch.Tensor]:
        """Random weights with unit-scale activations: Linear weights ~ N(0, fan_in^-1/2) (the head too, so
        different images get clearly different rewards), norms near 1, small biases, word embeddings ~ N(0, 1).
        The image enters the ViT at 1/100 scale, so its first LayerNorm sees a variance near 1e-4 and a wrong eps
        (1e-5 instead of BLIP's 1e-6) changes the scores measurably."""
        g = torch.Generator().manual_seed(seed)
        state: Dict[str, torch.Tensor] = {}
        for key, shape in self.shapes().items():
            if "LayerNorm.weight" in key or key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                value = 1 + 0.1 * torch.randn(shape, generator=g)
            elif key.startswith("blip.visual_encoder.") and key.split(".")[2] in ("cls_token", "pos_embed", "patch_embed"):
                fan_in = int(torch.tensor(shape[1:]).prod()) if key.endswith("proj.weight") else 1
                value = 0.01 * torch.randn(shape, generator=g) * fan_in ** -0.5
            elif key.endswith("bias"):
                value = 0.1 * torch.randn(shape, generator=g)
            elif len(shape) >= 2 and "embed" not in key:
                fan_in = int(torch.tensor(shape[1:]).prod())
                value = torch.randn(shape, generator=g) * fan_in ** -0.5
            else:
                value = torch.randn(shape, generator=g)
            state[key] = value
        # The released file also carries BERT's position_ids buffer.
        state["blip.text_encoder.embeddings.position_ids"] = torch.arange(self.positions).expand(1, -1).clone()
        return state


RELEASED = TinyImageReward(vision_width=1024, vision_depth=24, vision_heads=16, text_width=768, text_layers=12,
                           text_heads=12, text_ffn=3072, positions=512, projection=256, vocab=30524)


def write_imagereward(folder: Path, seed: int = 0, tokenizer: bool = True, spec: TinyImageReward = TinyImageReward(),
                      state: Dict[str, torch.Tensor] = None) -> Path:
    """``ImageReward.pt`` + ``med_config.json`` (+ ``tokenizer/``) in ``folder``, the layout the loader expects."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else spec.state_dict(seed), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(spec.med_config(), indent=2), encoding="utf-8")
    if tokenizer:
        write_bert_tokenizer(folder / "tokenizer")
    return folder


def write_hf_cache_entry(cache: Path, repo_id: str, files: Dict[str, bytes], commit: str = "0" * 40) -> Path:
    """A hub-cache snapshot as huggingface_hub lays it out: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


# ---- CLIP / PickScore ----

def clip_byte_vocab() -> Dict[str, int]:
    """CLIP's byte-level vocabulary with no merges: 256 byte symbols, the same with </w>, then the two specials."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    ordered = [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]
    tokens = ordered + [s + "</w>" for s in ordered] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_processor(folder: Path, image_size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_byte_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": image_size},
    }), encoding="utf-8")
    return folder


def write_clip_model(folder: Path, seed: int = 0, image_size: int = 32, logit_scale: float = 2.6592) -> Path:
    """A tiny CLIPModel (text and vision width 32, 2 layers, 2 heads) saved with transformers' own save_pretrained."""
    from transformers import CLIPConfig, CLIPModel

    vocab = len(clip_byte_vocab())
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16, logit_scale_init_value=logit_scale,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # bigger than the default init so images get clearly different scores
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embedding" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
    save_safetensors(model, folder)
    return folder


def save_safetensors(model, folder: Path) -> None:
    """``save_pretrained`` writing ``model.safetensors``: always in transformers 5, on request in 4.x (whose default is
    a pickled ``pytorch_model.bin``, which the rankers refuse)."""
    import inspect

    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        model.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file(), sorted(p.name for p in folder.iterdir())

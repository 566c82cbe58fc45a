"""ImageReward's reward written out as formulas over a state dict, one image at a time, like the original
``inference_rank``: no module from i4vgen_ext is used, so the ranker is checked against an independent statement of
the released model (BLIP ViT + med BERT with cross-attention + linear head, standardised)."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

MEAN = 0.16717362830052426
STD = 1.0333394966054072


def torchvision_like_transform(image: Image.Image, n_px: int = 224) -> torch.Tensor:
    """Compose([Resize(n_px, BICUBIC), CenterCrop(n_px), to RGB, ToTensor(), Normalize(CLIP)]) step by step, as
    torchvision does it on PIL images (short side to n_px, long side truncated; crop offsets rounded)."""
    w, h = image.size
    if w <= h:
        size = (n_px, int(n_px * h / w))
    else:
        size = (int(n_px * w / h), n_px)
    if size != (w, h):
        image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - n_px) / 2.0)), int(round((w - n_px) / 2.0))
    image = image.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    x = torch.as_tensor(np.array(image), dtype=torch.uint8).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (x - mean) / std


def _linear(s: Dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ s[name + ".weight"].T + s[name + ".bias"]


def _layer_norm(s: Dict[str, torch.Tensor], name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * s[name + ".weight"] + s[name + ".bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, additive=None) -> torch.Tensor:
    """(L, D) queries over (M, D) keys/values, split into heads; softmax(q k^T / sqrt(d) + mask) v."""
    d = q.shape[-1] // heads
    q, k, v = (t.reshape(t.shape[0], heads, d).transpose(0, 1) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if additive is not None:
        scores = scores + additive
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(0, 1).reshape(q.shape[1], heads * d)


def vision_tokens(s: Dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    v = "blip.visual_encoder."
    weight = s[v + "patch_embed.proj.weight"]
    p = weight.shape[-1]
    c, hh, ww = pixels.shape
    patches = pixels.reshape(c, hh // p, p, ww // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)
    x = patches @ weight.reshape(weight.shape[0], -1).T + s[v + "patch_embed.proj.bias"]
    x = torch.cat([s[v + "cls_token"][0], x]) + s[v + "pos_embed"][0]
    i = 0
    while f"{v}blocks.{i}.norm1.weight" in s:
        b = f"{v}blocks.{i}."
        h = _layer_norm(s, b + "norm1", x, 1e-6)
        q, k, vv = _linear(s, b + "attn.qkv", h).chunk(3, dim=-1)
        x = x + _linear(s, b + "attn.proj", _attend(q, k, vv, heads))
        h = _layer_norm(s, b + "norm2", x, 1e-6)
        x = x + _linear(s, b + "mlp.fc2", _gelu(_linear(s, b + "mlp.fc1", h)))
        i += 1
    return _layer_norm(s, v + "norm", x, 1e-6)


def text_cls(s: Dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
             config: dict) -> torch.Tensor:
    t = "blip.text_encoder."
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    x = s[t + "embeddings.word_embeddings.weight"][ids] + s[t + "embeddings.position_embeddings.weight"][: len(ids)]
    x = _layer_norm(s, t + "embeddings.LayerNorm", x, eps)
    additive = (1.0 - mask.to(torch.float32))[None, None, :] * -10000.0
    for i in range(config["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        for block, context, mask_ in (("attention", None, additive), ("crossattention", image, None)):
            kv = x if context is None else context
            a = _attend(_linear(s, f"{layer}{block}.self.query", x), _linear(s, f"{layer}{block}.self.key", kv),
                        _linear(s, f"{layer}{block}.self.value", kv), heads, mask_)
            x = _layer_norm(s, f"{layer}{block}.output.LayerNorm", _linear(s, f"{layer}{block}.output.dense", a) + x, eps)
        h = _gelu(_linear(s, layer + "intermediate.dense", x))
        x = _layer_norm(s, layer + "output.LayerNorm", _linear(s, layer + "output.dense", h) + x, eps)
    return x[0]


def reference_rewards(state: Dict[str, torch.Tensor], config: dict, tokenizer, prompt: str,
                      images: Sequence[Image.Image]) -> List[float]:
    """Tokenise once (max_length 35, padded), then per image: ViT -> BERT over the image tokens -> head on [CLS]."""
    s = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    tokens = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    ids, mask = tokens["input_ids"][0], tokens["attention_mask"][0]
    width = s["blip.visual_encoder.cls_token"].shape[-1]
    heads = config.get("vision_num_attention_heads", width // 64)
    rewards = []
    for image in images:
        pixels = torchvision_like_transform(image)
        feature = text_cls(s, ids, mask, vision_tokens(s, pixels, heads), config)
        for index in (0, 2, 4, 6, 7):  # Dropout layers at 1, 3, 5 are identities in eval; no activations
            feature = _linear(s, f"mlp.layers.{index}", feature)
        rewards.append(float((feature[0] - MEAN) / STD))
    return rewards

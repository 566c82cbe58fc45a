"""ImageReward v1.0 in plain torch: BLIP's ViT, BLIP's BERT with cross-attention, the linear reward head.

An independent re-implementation of the architecture of ImageReward (THUDM, Apache-2.0) and BLIP (Salesforce,
BSD-3-Clause). Module names copy the keys of the released ``ImageReward.pt``, so it loads with ``strict=True`` and no
renames. Only inference: dropout layers are left out (identities keep the head's indices), nothing is trained.
The ``image-reward`` package is never imported."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# Reward standardisation of ImageReward v1.0 (ImageReward.py: self.mean / self.std).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
PROMPT_TOKENS = 35  # the prompt is padded / truncated to this many BERT tokens
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MASKED = -10000.0  # BLIP's additive attention mask value
IGNORED_KEYS = ("blip.text_encoder.embeddings.position_ids",)  # a buffer the original saved; positions are 0..L-1

# med_config.json of THUDM/ImageReward (BLIP's BERT-base with cross-attention), used when the file is absent.
DEFAULT_MED_CONFIG: Dict[str, object] = {
    "hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
    "vocab_size": 30524, "add_cross_attention": True,
}


@dataclass(frozen=True)
class ImageRewardConfig:
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    text_positions: int
    vocab_size: int
    pad_token_id: int
    text_eps: float
    projection: int
    head_input: int

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, torch.Tensor], med_config: Mapping[str, object]) -> "ImageRewardConfig":
        """Vision sizes from the checkpoint's shapes (BLIP fixes its heads at width/64), text sizes from med_config.

        Raises KeyError naming a key the shapes cannot be read without, ValueError for an unusable config."""
        v = "blip.visual_encoder."
        width = state[v + "cls_token"].shape[-1]
        patches = state[v + "pos_embed"].shape[1] - 1
        patch = state[v + "patch_embed.proj.weight"].shape[-1]
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"{v}pos_embed holds {patches} patches, not a square grid")
        depth = 1 + max((int(k[len(v + "blocks."):].split(".")[0]) for k in state if k.startswith(v + "blocks.")),
                        default=-1)
        heads = int(med_config.get("vision_num_attention_heads", width // 64))
        if med_config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"med_config hidden_act {med_config.get('hidden_act')!r} is not BLIP's 'gelu'")
        if heads < 1 or width % heads:
            raise ValueError(f"vision width {width} cannot be split into {heads} heads")
        text_width, text_heads = int(med_config["hidden_size"]), int(med_config["num_attention_heads"])
        if text_width % text_heads:
            raise ValueError(f"text width {text_width} cannot be split into {text_heads} heads")
        return cls(
            image_size=side * patch, patch_size=patch, vision_width=width, vision_depth=depth, vision_heads=heads,
            vision_mlp=state[v + "blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * width,
            text_width=text_width, text_layers=int(med_config["num_hidden_layers"]), text_heads=text_heads,
            text_intermediate=int(med_config["intermediate_size"]),
            text_positions=int(med_config["max_position_embeddings"]), vocab_size=int(med_config["vocab_size"]),
            pad_token_id=int(med_config.get("pad_token_id", 0)),
            text_eps=float(med_config.get("layer_norm_eps", 1e-12)),
            projection=state["blip.vision_proj.weight"].shape[0], head_input=state["mlp.layers.0.weight"].shape[1],
        )


# ---- preprocessing (the original's torchvision Compose, reproduced with PIL and numpy) ----

def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """Resize(size, bicubic) -> CenterCrop(size) -> RGB -> ToTensor -> Normalize(CLIP mean/std); (3, size, size).

    Same order as the original: the RGB conversion comes after the crop, so RGBA is resampled with its alpha."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size != (width, height):
        image = image.resize(new_size, Image.BICUBIC)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return pixels.sub(mean).div(std)


# ---- vision tower: BLIP ViT (timm layout), pre-norm blocks, LayerNorm eps 1e-6 ----

class PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class VisionAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class VisionMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisionAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VisionMlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        grid = c.image_size // c.patch_size
        self.patch_embed = PatchEmbed(c.vision_width, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, c.vision_width))
        self.blocks = nn.ModuleList(VisionBlock(c.vision_width, c.vision_heads, c.vision_mlp) for _ in range(c.vision_depth))
        self.norm = nn.LayerNorm(c.vision_width, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---- text tower: BLIP's "med" BERT, post-norm; self-attention, cross-attention to the image, FFN ----

class BertSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, additive_mask=None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask)
        return out.transpose(1, 2).reshape(x.shape)


class BertSelfOutput(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int, eps: float):
        super().__init__()
        self.self = BertSelfAttention(width, heads, kv_width)
        self.output = BertSelfOutput(width, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, additive_mask=None) -> torch.Tensor:
        return self.output(self.self(x, context, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, hidden: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.attention = BertAttention(c.text_width, c.text_heads, c.text_width, c.text_eps)
        self.crossattention = BertAttention(c.text_width, c.text_heads, c.vision_width, c.text_eps)
        self.intermediate = BertIntermediate(c.text_width, c.text_intermediate)
        self.output = BertOutput(c.text_intermediate, c.text_width, c.text_eps)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens)  # every image token is attended to (BLIP passes an all-ones mask)
        return self.output(self.intermediate(x), x)


class BertEmbeddings(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.text_width, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.text_positions, c.text_width)
        self.LayerNorm = nn.LayerNorm(c.text_width, eps=c.text_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions)[None])


class BertEncoder(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.text_layers))


class TextEncoder(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASKED
        for layer in self.encoder.layer:
            x = layer(x, additive, image_tokens)
        return x


class Blip(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.visual_encoder = VisionTransformer(c)
        self.text_encoder = TextEncoder(c)
        # In the checkpoint (BLIP's contrastive projections) but not used for the reward.
        self.vision_proj = nn.Linear(c.vision_width, c.projection)
        self.text_proj = nn.Linear(c.text_width, c.projection)


class RewardHead(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1, purely linear: the original's ReLUs are commented out."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
            nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    def __init__(self, c: ImageRewardConfig):
        super().__init__()
        self.config = c
        self.blip = Blip(c)
        self.mlp = RewardHead(c.head_input)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (N,) for N images and one tokenised prompt (1, L), broadcast over the images."""
        image_tokens = self.blip.visual_encoder(pixels)
        n = pixels.shape[0]
        text = self.blip.text_encoder(ids.expand(n, -1), attention_mask.expand(n, -1), image_tokens)
        head = self.mlp.layers[0].weight
        rewards = self.mlp(text[:, 0].to(head.dtype)).squeeze(-1)
        return (rewards - REWARD_MEAN) / REWARD_STD


def check_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> List[str]:
    """Every way ``state`` differs from ``model``'s parameters (missing, unexpected, wrong shape); empty if none."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = [f"missing key {k}" for k in expected if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    problems += [
        f"key {k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items() if k in state and state[k].shape != shape
    ]
    return problems


def build_model(state: Dict[str, torch.Tensor], med_config: Mapping[str, object], dtype: torch.dtype) -> ImageRewardModel:
    """The model holding ``state``'s tensors, strictly: any missing, renamed or reshaped key raises ValueError.

    Built on the meta device and filled by assignment, so the 447 M parameters are never randomly initialised."""
    for key in IGNORED_KEYS:
        state.pop(key, None)
    config = ImageRewardConfig.from_checkpoint(state, med_config)
    with torch.device("meta"):
        model = ImageRewardModel(config)
    problems = check_keys(model, state)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} differences)" if len(problems) > 8 else "")
        raise ValueError(f"checkpoint does not match ImageReward v1.0: {shown}")
    model.load_state_dict(state, strict=True, assign=True)
    model.blip.to(dtype)
    model.mlp.float()  # the head stays in fp32, as the original casts the [CLS] features to float
    return model.eval().requires_grad_(False)


def preprocess_batch(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    return torch.stack([preprocess(image, size) for image in images])

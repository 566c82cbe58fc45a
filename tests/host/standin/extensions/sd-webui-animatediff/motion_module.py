"""Stand-in of sd-webui-animatediff ``motion_module.py``: ``MotionModuleType``, ``MotionWrapper`` (down_blocks 4 x 2,
up_blocks 4 x 3, mid_block 1 for v2/AnimateLCM; ``is_xl``/``is_adxl``/``is_hotshot``/``is_v2``/
``enable_gn_hack``), and a temporal layer that, like ``VersatileAttention.forward``, reads the frame count from
``mm_animatediff.ad_params.batch_size`` and mixes along frames: a mean mix plus self-attention over the frames in
``temporal_transformer.transformer_blocks.0.attention_blocks.0``, a ``VersatileAttention`` (AD's own
``CrossAttention`` subclass, not ldm's: ``to_q``/``to_k``/``to_v``/``to_out``, ``heads``, ``scale``), named as in AD.
Every call is counted."""
from enum import Enum

import torch
from torch import nn


class MotionModuleType(Enum):
    AnimateDiffV1 = "AnimateDiff V1, Yuwei Guo, Shanghai AI Lab"
    AnimateDiffV2 = "AnimateDiff V2, Yuwei Guo, Shanghai AI Lab"
    AnimateDiffV3 = "AnimateDiff V3, Yuwei Guo, Shanghai AI Lab"
    AnimateDiffXL = "AnimateDiff SDXL, Yuwei Guo, Shanghai AI Lab"
    SparseCtrl = "SparseCtrl, Yuwei Guo, Shanghai AI Lab"
    HotShotXL = "HotShot-XL, John Mullan, Natural Synthetics Inc"
    AnimateLCM = "AnimateLCM, Fu-Yun Wang, MMLab@CUHK"


class TemporalCounter:
    calls = 0
    frames_seen = []  # frame count f of every call


class CrossAttention(nn.Module):
    def __init__(self, query_dim, heads=2, dim_head=4):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))


class VersatileAttention(CrossAttention):
    def forward(self, x):  # (batch * pixels, frames, channels): attention along the frames
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).flatten(2))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.attention_blocks = nn.ModuleList([VersatileAttention(channels)])


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels)])


class VanillaTemporalModule(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.mix = nn.Parameter(torch.full((channels,), 0.5))
        self.temporal_transformer = TemporalTransformer3DModel(channels)

    def forward(self, x):
        from scripts.animatediff_mm import mm_animatediff

        f = mm_animatediff.ad_params.batch_size
        TemporalCounter.calls += 1
        TemporalCounter.frames_seen.append(f)
        if x.shape[0] % f:
            raise RuntimeError(f"motion module got {x.shape[0]} latents, not a multiple of {f} frames")
        v = x.reshape(x.shape[0] // f, f, *x.shape[1:])
        mean = v.mean(dim=1, keepdim=True)
        v = v + torch.tanh(self.mix)[None, None, :, None, None] * (mean - v)
        b, c, h, w = v.shape[0], v.shape[2], v.shape[3], v.shape[4]
        tokens = v.permute(0, 3, 4, 1, 2).reshape(b * h * w, f, c)
        attention = self.temporal_transformer.transformer_blocks[0].attention_blocks[0]
        tokens = tokens + 0.3 * attention(tokens)
        v = tokens.reshape(b, h, w, f, c).permute(0, 3, 4, 1, 2)
        return v.reshape(x.shape)


class MotionModule(nn.Module):
    def __init__(self, channels, num_mm):
        super().__init__()
        self.motion_modules = nn.ModuleList([VanillaTemporalModule(channels) for _ in range(num_mm)])


class MotionWrapper(nn.Module):
    def __init__(self, mm_name, mm_hash, mm_type):
        super().__init__()
        self.mm_name, self.mm_hash, self.mm_type = mm_name, mm_hash, mm_type
        levels = 3 if self.is_xl else 4
        self.down_blocks = nn.ModuleList([MotionModule(8, 2) for _ in range(levels)])
        self.up_blocks = nn.ModuleList([MotionModule(8, 3) for _ in range(levels)])
        if self.is_v2:
            self.mid_block = MotionModule(8, 1)

    def enable_gn_hack(self):
        return self.mm_type in [MotionModuleType.AnimateDiffV1, MotionModuleType.HotShotXL]

    @property
    def is_xl(self):
        return self.mm_type in [MotionModuleType.AnimateDiffXL, MotionModuleType.HotShotXL]

    @property
    def is_adxl(self):
        return self.mm_type == MotionModuleType.AnimateDiffXL

    @property
    def is_hotshot(self):
        return self.mm_type == MotionModuleType.HotShotXL

    @property
    def is_v2(self):
        return self.mm_type in [MotionModuleType.AnimateDiffV2, MotionModuleType.AnimateLCM]

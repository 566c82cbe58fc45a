"""Follows ``ldm/modules/attention.py`` of Stability-AI/stablediffusion: ``CrossAttention(query_dim, context_dim=None,
heads=8, dim_head=64, dropout=0.)`` with ``scale = dim_head ** -0.5``, ``heads``, bias-free ``to_q``/``to_k``/``to_v``
and ``to_out = Sequential(Linear, Dropout)``, ``forward(x, context=None, mask=None)`` (softmax(q k^T * scale) v per
head); ``FeedForward``; ``BasicTransformerBlock`` (``attn1`` self-attention, ``attn2`` cross-attention, ``ff``,
``norm1..3``; ``ATTENTION_MODES``); ``SpatialTransformer`` (``norm``, conv ``proj_in``, ``transformer_blocks``, conv
``proj_out``, residual). A1111 replaces ``CrossAttention.forward`` at class level with its optimized forward
(``modules/sd_hijack_optimizations.py``). Tiny bodies: gradient checkpointing is left out (nothing here trains)."""
import torch
from ldm.util import default, exists
from torch import einsum, nn


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()), nn.Dropout(dropout),
                                 nn.Linear(inner_dim, dim_out))

    def forward(self, x):  # self.net's layers applied functionally: the same result, fewer module calls on CPU
        project_in, output = self.net[0][0], self.net[2]
        return torch.nn.functional.linear(torch.nn.functional.gelu(project_in(x)), output.weight, output.bias)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, mask=None):
        h = self.heads
        q = self.to_q(x)
        context = default(context, x)
        k = self.to_k(context)
        v = self.to_v(context)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).flatten(0, 1) for t in (q, k, v))
        sim = einsum('b i d, b j d -> b i j', q, k) * self.scale
        if exists(mask):
            raise NotImplementedError("the stand-in has no attention masks")
        out = einsum('b i j, b j d -> b i d', sim.softmax(dim=-1), v)
        out = out.unflatten(0, (-1, h)).permute(0, 2, 1, 3).flatten(2)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    ATTENTION_MODES = {"softmax": CrossAttention, "softmax-xformers": CrossAttention}

    def __init__(self, dim, n_heads, d_head, dropout=0., context_dim=None, gated_ff=True, checkpoint=True,
                 disable_self_attn=False):
        super().__init__()
        attn_cls = self.ATTENTION_MODES["softmax"]
        self.disable_self_attn = disable_self_attn
        self.attn1 = attn_cls(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
                              context_dim=context_dim if self.disable_self_attn else None)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = attn_cls(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x, context=None):
        return self._forward(x, context)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0., context_dim=None, disable_self_attn=False,
                 use_linear=False, use_checkpoint=True):
        super().__init__()
        if exists(context_dim) and not isinstance(context_dim, list):
            context_dim = [context_dim]
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(num_groups=4, num_channels=in_channels, eps=1e-6, affine=True)  # 32 groups in SD
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1) if not use_linear else nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim[d],
                                  disable_self_attn=disable_self_attn, checkpoint=use_checkpoint)
            for d in range(depth)])
        # zero-initialised in ldm (trained weights are not zero)
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1) if not use_linear else nn.Linear(inner_dim, in_channels)
        self.use_linear = use_linear

    def forward(self, x, context=None):
        if not isinstance(context, list):
            context = [context]
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=context[i])
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

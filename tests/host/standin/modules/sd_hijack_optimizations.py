"""Follows ``modules/sd_hijack_optimizations.py``: ``SdOptimization`` (``apply``/``undo``; ``undo`` puts
``hypernetwork.attention_CrossAttention_forward`` back on ``ldm.modules.attention.CrossAttention``) and
``SdOptimizationSdp`` ("sdp", priority 70), whose ``apply`` sets ``CrossAttention.forward`` at class level to
``scaled_dot_product_attention_forward``: q from ``to_q(x)``, k/v from ``to_k``/``to_v`` of the hypernetwork-applied
context, heads split as (batch, heads, tokens, head_dim), ``opts.upcast_attn`` casting to float, torch's
``scaled_dot_product_attention``, ``to_out[0]`` then ``to_out[1]``. The model's ``AttnBlock`` is not modelled."""
import ldm.modules.attention
import torch
from ldm.util import default
from modules import shared
from modules.hypernetworks import hypernetwork


class SdOptimization:
    name = None
    label = None
    cmd_opt = None
    priority = 0

    def title(self):
        return self.name if self.label is None else f"{self.name} - {self.label}"

    def is_available(self):
        return True

    def apply(self):
        pass

    def undo(self):
        ldm.modules.attention.CrossAttention.forward = hypernetwork.attention_CrossAttention_forward


class SdOptimizationSdp(SdOptimization):
    name = "sdp"
    label = "scaled dot product"
    cmd_opt = "opt_sdp_attention"
    priority = 70

    def is_available(self):
        return callable(getattr(torch.nn.functional, "scaled_dot_product_attention", None))

    def apply(self):
        ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    if mask is not None:
        raise NotImplementedError("the stand-in has no attention masks")
    rows, heads = x.shape[0], self.heads
    context_k, context_v = hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, default(context, x))

    def split_heads(t):  # (rows, tokens, heads * head_dim) -> (rows, heads, tokens, head_dim)
        return t.reshape(rows, t.shape[1], heads, x.shape[2] // heads).transpose(1, 2)

    q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context_k)), split_heads(self.to_v(context_v))
    dtype = q.dtype
    if shared.opts.upcast_attn:
        q, k, v = q.float(), k.float(), v.float()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).flatten(2).to(dtype)
    return self.to_out[1](self.to_out[0](out))

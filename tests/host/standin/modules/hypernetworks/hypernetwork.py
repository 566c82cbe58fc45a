"""Follows ``modules/hypernetworks/hypernetwork.py``: ``apply_single_hypernetwork`` (a hypernetwork's ``layers`` maps a
context width to a (k, v) pair of modules applied to the context), ``apply_hypernetworks(hypernetworks, context,
layer=None)`` -> (context_k, context_v), and ``attention_CrossAttention_forward``, the hypernetwork-aware plain
attention that A1111's ``SdOptimization.undo`` puts back on ``CrossAttention``."""
from ldm.util import default
from modules import shared
from torch import einsum


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    pair = getattr(hypernetwork, "layers", {}).get(context_k.shape[2]) if hypernetwork is not None else None
    if pair is None:  # no layers for this width: the context passes unchanged
        return context_k, context_v
    if layer is not None:
        layer.hyper_k, layer.hyper_v = pair
    return pair[0](context_k), pair[1](context_v)


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context_v = context
    for network in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(network, context_k, context_v, layer)
    return context_k, context_v


def attention_CrossAttention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    q = self.to_q(x)
    context = default(context, x)
    context_k, context_v = apply_hypernetworks(shared.loaded_hypernetworks, context, self)
    k = self.to_k(context_k)
    v = self.to_v(context_v)
    q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).flatten(0, 1) for t in (q, k, v))
    sim = einsum('b i d, b j d -> b i j', q, k) * self.scale
    out = einsum('b i j, b j d -> b i d', sim.softmax(dim=-1), v)
    return self.to_out(out.unflatten(0, (-1, h)).permute(0, 2, 1, 3).flatten(2))

"""What a host sampling call is given: the latent shape, the host's video layout, the head prompt's conds for ``n``
images, the sampler's kind (timesteps or sigmas) and attributes lent for the call.

Details: docs/webui-host.md §Backbone.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from . import shim


def latent_shape(p: Any) -> tuple:
    processing = shim.processing()
    channels = getattr(p.sd_model, "latent_channels", processing.opt_C)
    return channels, p.height // processing.opt_f, p.width // processing.opt_f


def to_host_video(x: torch.Tensor) -> torch.Tensor:
    """(1, 4, F, h, w) -> (F, 4, h, w)."""
    return x[0].permute(1, 0, 2, 3).contiguous()


def from_host_video(x: torch.Tensor) -> torch.Tensor:
    """(F, 4, h, w) -> (1, 4, F, h, w)."""
    return x.permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def repeat_conds(c: Any, uc: Any, n: int) -> tuple:
    """The head prompt's conditioning for ``n`` images, reusing the schedules the host already computed for this
    batch (with the LoRA text-encoder part): ``MulticondLearnedConditioning(shape, batch)`` and the per-prompt list
    of ``ScheduledPromptConditioning`` schedules (``modules/prompt_parser.py``)."""
    cond = type(c)(shape=(n,), batch=[c.batch[0]] * n)
    return cond, [uc[0]] * n


def is_timestep_sampler(sampler: Any) -> bool:
    """DDIM/PLMS/UniPC (``CompVisSampler``) take timesteps and return eps; k-diffusion ones take sigmas, return x0."""
    return hasattr(sampler, "get_timesteps") and not hasattr(sampler, "get_sigmas")


@contextlib.contextmanager
def borrowed(obj: Any, **values: Any) -> Iterator[None]:
    """Set attributes for the body and put the previous values (or their absence) back afterwards."""
    missing = object()
    saved = {name: obj.__dict__.get(name, missing) for name in values}
    try:
        for name, value in values.items():
            setattr(obj, name, value)
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, value)

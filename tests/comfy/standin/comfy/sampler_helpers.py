"""Follows ``comfy/sampler_helpers.py``: ``convert_cond``, ``prepare_model_patcher`` (the patcher's wrappers merged
into ``model_options["transformer_options"]["wrappers"]``), ``prepare_sampling`` (``load_models_gpu`` of the patcher),
``cleanup_models``."""
from __future__ import annotations

import comfy.model_management
import comfy.patcher_extension


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        temp["cross_attn"] = c[0]
        temp["model_conds"] = {}
        out.append(temp)
    return out


def prepare_model_patcher(model, conds, model_options: dict):
    comfy.patcher_extension.merge_nested_dicts(model_options["transformer_options"].setdefault("wrappers", {}),
                                               model.wrappers, copy_dict1=False)


def prepare_sampling(model, noise_shape, conds, model_options=None):
    comfy.model_management.load_models_gpu([model])
    return model.model, conds, []


def cleanup_models(conds, models):
    pass

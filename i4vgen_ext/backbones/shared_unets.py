"""The image UNet and the video UNet as two views over ONE set of spatial weights.

I4VGen's anchor stage needs SD1.5 *without* motion modules. diffusers' ``UNetMotionModel`` has no switch for that
(its temporal transformer is not an identity even for one frame), and a second UNet copy would cost 3.4 GB at
full size. So a model is built on the ``meta`` device (no memory) and the other model's spatial submodules are
*assigned* into it: both views then hold the very same parameter tensors, and a LoRA fused into one shows in both.
"""
from __future__ import annotations

import inspect
from typing import Iterable

import torch
from torch import nn

_TOP_LEVEL = ("conv_in", "time_proj", "time_embedding", "conv_norm_out", "conv_act", "conv_out")
_BLOCK_PARTS = ("resnets", "attentions", "downsamplers", "upsamplers")


def _block_pairs(source: nn.Module, target: nn.Module):
    for side in ("down_blocks", "up_blocks"):
        source_blocks, target_blocks = getattr(source, side), getattr(target, side)
        if len(source_blocks) != len(target_blocks):
            raise ValueError(f"the two models have {len(source_blocks)} and {len(target_blocks)} {side}")
        yield from zip(source_blocks, target_blocks, strict=True)


def share_spatial_modules(source: nn.Module, target: nn.Module) -> None:
    """Point ``target``'s spatial submodules at ``source``'s (UNet2DConditionModel <-> UNetMotionModel)."""
    for name in _TOP_LEVEL:
        setattr(target, name, getattr(source, name))
    for source_block, target_block in _block_pairs(source, target):
        for part in _BLOCK_PARTS:
            if hasattr(target_block, part):
                setattr(target_block, part, getattr(source_block, part, None))
    target.mid_block.resnets = source.mid_block.resnets
    target.mid_block.attentions = source.mid_block.attentions


def share_motion_modules(source: nn.Module, target: nn.Module) -> None:
    """Point ``target``'s motion modules at ``source``'s (a MotionAdapter or another UNetMotionModel)."""
    for source_block, target_block in _block_pairs(source, target):
        target_block.motion_modules = source_block.motion_modules
    if hasattr(target.mid_block, "motion_modules"):
        if source.mid_block is None or not hasattr(source.mid_block, "motion_modules"):
            raise ValueError("the UNet expects a mid-block motion module that the adapter does not have")
        target.mid_block.motion_modules = source.mid_block.motion_modules


def _assert_materialized(model: nn.Module) -> None:
    leftovers = [n for n, t in _tensors(model) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"{type(model).__name__} still has unassigned (meta) tensors: {leftovers[:5]}")


def _tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def image_unet_config(motion_config) -> dict:
    """The UNet2DConditionModel config whose modules line up with a UNetMotionModel's spatial part."""
    from diffusers import UNet2DConditionModel

    config = dict(motion_config)
    config["down_block_types"] = [
        "CrossAttnDownBlock2D" if "CrossAttn" in t else "DownBlock2D" for t in config["down_block_types"]]
    config["up_block_types"] = [
        "CrossAttnUpBlock2D" if "CrossAttn" in t else "UpBlock2D" for t in config["up_block_types"]]
    config["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    # UNet2DConditionModel calls the head count "attention_head_dim" (a historical misnomer).
    config["attention_head_dim"] = config.pop("num_attention_heads")
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self", "num_attention_heads"}
    return {k: v for k, v in config.items() if k in accepted}


def image_unet_view(motion_unet) -> "UNet2DConditionModel":  # noqa: F821
    """A UNet2DConditionModel that runs ``motion_unet``'s spatial layers only (zero motion-module calls)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(image_unet_config(motion_unet.config))
    share_spatial_modules(motion_unet, unet)
    _assert_materialized(unet)
    return unet.eval()


def motion_unet_from_parts(unet, adapter) -> "UNetMotionModel":  # noqa: F821
    """A UNetMotionModel made of ``unet``'s spatial modules and ``adapter``'s motion modules, sharing both."""
    from diffusers import UNetMotionModel

    with torch.device("meta"):
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    share_spatial_modules(unet, motion_unet)
    share_motion_modules(adapter, motion_unet)
    _assert_materialized(motion_unet)
    return motion_unet.eval()

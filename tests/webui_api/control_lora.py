"""A random Control-LoRA (Stability AI's ``control-lora-*-rank*.safetensors`` layout) for an SDXL UNet, from the
UNet's LDM key names and shapes alone (no weights held), as sd-webui-controlnet 1.1.455 loads it.

Layout (keys without prefix, in the ControlNet's own ``cldm.ControlNet`` names):

- ``lora_controlnet``: an empty marker tensor; ``build_model_by_guess`` (scripts/controlnet_model_guess.py) takes
  any file holding it for a Control-LoRA, SDXL when ``input_blocks.11.0.in_layers.0.weight`` is absent, and builds
  ``controlnet_sdxl_config`` with ``torch.nn.Linear/Conv2d`` swapped for the weightless ``LinearWithLoRA`` /
  ``Conv2dWithLoRA`` (scripts/controlnet_lora.py), then sets every tensor of the file as an attribute by its key.
- The UNet encoder copy (``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``): for each Linear/Conv
  weight a pair ``<layer>.up`` ``(out, rank[, 1, 1])`` / ``<layer>.down`` ``(rank, in[, kh, kw])``; at run time
  ``bind_control_lora`` points each layer at the loaded UNet's layer of the same name and its forward uses
  ``unet_weight + (up.flatten(1) @ down.flatten(1)).reshape(unet_weight.shape)``. Every bias and every norm
  weight/bias is a full tensor (those layers take nothing from the UNet: a missing bias would be no bias).
- Full tensors for what the UNet lacks: ``input_hint_block.{0,2,...,14}`` convs (hint channels -> 16 -> 16 -> 32
  -> 32 -> 96 -> 96 -> 256 -> model channels), ``zero_convs.{i}.0`` (one 1x1 conv per input block) and
  ``middle_block_out.0``.

Random scales keep outputs finite and the control visible: each LoRA delta is ~0.1 of a unit-variance init
(std 0.1/sqrt(fan_in)), biases and norm offsets ~0.02, hint convs He-scaled, zero convs half a unit gain.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Mapping, Sequence, Tuple, Union

import torch

from i4vgen_ext.backbones.configs import UNET_PREFIX

FILE_NAME = "control-lora-canny-rank16.safetensors"  # for models/ControlNet; CN reads the layout, not the name
RANK = 16  # ~61 MiB in fp16 at SDXL size (rank 128 gives Stability's own rank128 file size, 377 MiB)
MARKER = "lora_controlnet"
ENCODER_PARTS = ("time_embed", "label_emb", "input_blocks", "middle_block")
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # cldm.py input_hint_block between the hint and the model channels
LORA_DELTA = 0.1
SMALL = 0.02
ZERO_CONV_GAIN = 0.5

Shapes = Mapping[str, Union[Sequence[int], torch.Tensor]]


def _normal(shape: Sequence[int], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator) * std


def encoder_shapes(unet_ldm_shapes: Shapes) -> Dict[str, Tuple[int, ...]]:
    """The encoder part of an LDM UNet key set (with or without ``model.diffusion_model.``; shapes or the tensors
    themselves), in ControlNet names."""
    shapes = {k.removeprefix(UNET_PREFIX): tuple(getattr(v, "shape", v)) for k, v in unet_ldm_shapes.items()}
    return {k: v for k, v in sorted(shapes.items()) if k.split(".")[0] in ENCODER_PARTS}


def block_widths(shapes: Shapes) -> Iterator[int]:
    """Output channels of input blocks 0, 1, ...: what each zero conv sees (a block's transformer keeps its width)."""
    index = 0
    while any(k.startswith(f"input_blocks.{index}.") for k in shapes):
        for layer in ("0.out_layers.3", "0.op", "0"):
            if f"input_blocks.{index}.{layer}.weight" in shapes:
                yield shapes[f"input_blocks.{index}.{layer}.weight"][0]
                break
        else:
            raise KeyError(f"input block {index} has no resnet, downsampler or conv_in weight")
        index += 1


def control_lora(unet_ldm_shapes: Shapes, rank: int, seed: int, hint_channels: int = 3) -> Dict[str, torch.Tensor]:
    """A random Control-LoRA state dict (fp32) for the SDXL UNet whose LDM keys and shapes are ``unet_ldm_shapes``."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    generator = torch.Generator().manual_seed(seed)
    shapes = encoder_shapes(unet_ldm_shapes)
    if "input_blocks.0.0.weight" not in shapes:
        raise KeyError("no input_blocks.0.0.weight: not an LDM UNet key set")
    out: Dict[str, torch.Tensor] = {MARKER: torch.zeros(0)}
    for key, shape in shapes.items():
        layer, _, name = key.rpartition(".")
        if len(shape) >= 2:  # a Linear / Conv weight: a LoRA pair over the UNet's own weight
            fan_in = math.prod(shape[1:])
            out[f"{layer}.down"] = _normal((rank, *shape[1:]), 1 / math.sqrt(fan_in), generator)
            out[f"{layer}.up"] = _normal((shape[0], rank, *[1] * (len(shape) - 2)), LORA_DELTA / math.sqrt(rank),
                                         generator)
        elif name == "weight":  # a norm's scale
            out[key] = 1 + _normal(shape, SMALL, generator)
        else:
            out[key] = _normal(shape, SMALL, generator)
    model_channels = shapes["input_blocks.0.0.weight"][0]
    widths = (hint_channels, *HINT_WIDTHS, model_channels)
    convs = [(f"input_hint_block.{2 * i}", a, b, 3, math.sqrt(2 / (9 * a))) for i, (a, b) in
             enumerate(zip(widths, widths[1:]))]
    convs += [(f"zero_convs.{i}.0", c, c, 1, ZERO_CONV_GAIN / math.sqrt(c)) for i, c in enumerate(block_widths(shapes))]
    middle = shapes["middle_block.2.out_layers.3.weight"][0]
    convs.append(("middle_block_out.0", middle, middle, 1, ZERO_CONV_GAIN / math.sqrt(middle)))
    for layer, c_in, c_out, kernel, std in convs:
        out[f"{layer}.weight"] = _normal((c_out, c_in, kernel, kernel), std, generator)
        out[f"{layer}.bias"] = _normal((c_out,), SMALL, generator)
    return out

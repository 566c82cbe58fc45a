"""Write random-weight, full-size SD1.5 model files into an AUTOMATIC1111 WebUI folder, in the formats the WebUI,
sd-webui-animatediff and sd-webui-controlnet load, so that a live server can run our extension offline: a checkpoint
in the original LDM key layout (models/Stable-diffusion/random-sd15.safetensors), an AnimateDiff v2 motion module
(extensions/sd-webui-animatediff/model/mm_sd_v15_v2.safetensors, with v1, v3 and AnimateLCM-shaped ones beside it), a
ControlNet in the original ``control_model.`` layout (models/ControlNet/control_v11p_sd15_canny.safetensors), a small
kohya LoRA (models/Lora/random-lora.safetensors) and a motion LoRA for the v2 module
(models/Lora/mm_sd15_v2_lora_random.safetensors); with ``--sdxl`` also an SDXL base checkpoint
(models/Stable-diffusion/random-sdxl.safetensors, ``sdxl_models.py``), a Control-LoRA for it (``control_lora.py``) and
an AnimateDiff-XL module (mm_sdxl_v10_beta_random.safetensors; the HotShot-XL one is always written); with
``--hf-home`` also the ``openai/clip-vit-large-patch14`` tokenizer and config in the Hugging Face cache layout, which
the WebUI reads when it builds the model (start it with HF_HOME set to that folder). The same seed writes the same
files. Weights are stored in fp16 (the WebUI upcasts them under ``--no-half``). Usage: ``python
tests/webui_api/build_models.py --webui DIR [--hf-home DIR] [--sdxl] [--seed N]``. ``--sdxl`` needs about 8 GB of free
memory for two minutes; a server running it holds about 15 GB.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from i4vgen_ext.backbones.clip_tokenizer import write_clip_tokenizer  # noqa: E402
from i4vgen_ext.backbones.configs import MM_V1, MM_V2, MM_V3, SD15_TEXT, SD15_UNET, SD15_VAE, UNET_PREFIX  # noqa: E402
from i4vgen_ext.backbones.ldm_convert import motion_adapter_to_original, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402

CLIP_REPO = "openai/clip-vit-large-patch14"
CLIP_REVISION = "0" * 40  # any fixed snapshot name: the cache's refs/main points at it
HINT_CHANNELS = (3, 16, 16, 32, 32, 96, 96, 256, 320)  # ControlNet input_hint_block convs 0, 2, ..., 14
LORA_RANK = 4

Tensors = Dict[str, torch.Tensor]
# AnimateDiff tells the versions apart by their keys (motion_module.py, MotionModuleType.get_mm_type): a mid block
# and positional encodings = v2; a mid block without them = AnimateLCM; no mid block, 24 positions = v1, 32 = v3.
MOTION_MODULES = (
    ("mm_sd_v15_v2.safetensors", MM_V2, True),
    ("mm_sd_v15.safetensors", MM_V1, True),
    ("v3_sd15_mm.safetensors", MM_V3, True),
    ("animatelcm_sd15_random.safetensors", MM_V2, False),
    # three levels, 24 positions: AnimateDiff guesses HotShot-XL (an SDXL module: refused on SD1.5 checkpoints)
    ("hotshotxl_random.safetensors", {**MM_V1, "block_out_channels": (320, 640, 1280)}, True),
)
# three levels, 32 positions: AnimateDiff guesses AnimateDiff-XL
SDXL_MOTION_MODULE = ("mm_sdxl_v10_beta_random.safetensors", {**MM_V3, "block_out_channels": (320, 640, 1280)}, True)
MOTION_LORA_FOR = "mm_sd_v15_v2.safetensors"  # motion LoRAs apply to v2 modules only (AnimateDiff's docs)


def save(tensors: Tensors, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}, str(path))
    print(f"wrote {path} ({len(tensors)} tensors, {path.stat().st_size / 2**20:.0f} MiB)")


def seeded(seed: int, build):
    torch.manual_seed(seed)
    with torch.no_grad():
        return build()


def text_encoder(seed: int) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    model = seeded(seed, lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval())
    norm = next(m for n, m in model.named_modules() if n.endswith("final_layer_norm"))
    with torch.no_grad():  # a zero bias makes A1111's "Original" emphasis divide 0 by 0 (every prompt NaN)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    return model


def controlnet(unet_ldm: Tensors, config, seed: int) -> Tensors:
    """The original ControlNet layout: a copy of the UNet encoder plus the hint block and zero convs (random here)."""
    out = {"control_model." + k[len(UNET_PREFIX):]: v for k, v in unet_ldm.items()
           if k[len(UNET_PREFIX):].split(".")[0] in ("time_embed", "input_blocks", "middle_block")}
    levels = config["block_out_channels"]
    widths = [levels[0]]  # one zero conv per input block: conv_in, then each level's resnets and its downsampler
    for level, channels in enumerate(levels):
        widths += [channels] * (config["layers_per_block"] + (level < len(levels) - 1))
    torch.manual_seed(seed)
    hint = zip(HINT_CHANNELS, HINT_CHANNELS[1:])
    convs = {f"input_hint_block.{2 * i}": nn.Conv2d(a, b, 3) for i, (a, b) in enumerate(hint)}
    convs.update({f"zero_convs.{i}.0": nn.Conv2d(c, c, 1) for i, c in enumerate(widths)})
    convs["middle_block_out.0"] = nn.Conv2d(levels[-1], levels[-1], 1)
    for name, conv in convs.items():
        out.update({f"control_model.{name}.{p}": t for p, t in conv.state_dict().items()})
    return out


def random_lora(layers, seed: int, scale: float) -> Tensors:
    """kohya LoRA tensors (rank ``LORA_RANK``) for ``layers``: (A1111 network name, in features, out features)."""
    generator = torch.Generator().manual_seed(seed)
    out: Tensors = {}
    for name, in_features, out_features in layers:
        out[name + ".lora_down.weight"] = torch.randn(LORA_RANK, in_features, generator=generator) * scale
        out[name + ".lora_up.weight"] = torch.randn(out_features, LORA_RANK, generator=generator) * scale
        out[name + ".alpha"] = torch.tensor(float(LORA_RANK))
    return out


def lora(unet: nn.Module, text: nn.Module, seed: int) -> Tensors:
    """kohya names (diffusers spelling): attention q/k/v/out of every UNet transformer block and text-encoder layer."""
    layers = [("lora_unet_" + n, m) for n, m in unet.named_modules()
              if re.search(r"transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)$", n)]
    layers += [("lora_te_text_model_" + n.removeprefix("text_model."), m) for n, m in text.named_modules()
               if re.search(r"layers\.\d+\.self_attn\.(q|k|v|out)_proj$", n)]
    return random_lora([(n.replace(".", "_"), m.in_features, m.out_features) for n, m in layers], seed, 0.05)


def motion_lora(motion: Tensors, seed: int) -> Tensors:
    """A motion LoRA in the form sd-webui-animatediff's docs load "like any other LoRA": A1111 names each layer of
    the injected motion module by its key with dots as underscores (AnimateDiffMM._set_layer_mapping); here the
    temporal attention's q/k/v/out projections."""
    layers = [(key[:-len(".weight")].replace(".", "_"), weight.shape[1], weight.shape[0])
              for key, weight in motion.items()
              if re.search(r"attention_blocks\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", key)]
    return random_lora(layers, seed, 0.1)


def write_clip_cache(hf_home: Path) -> None:
    """What ``CLIPTokenizer/CLIPTextModel.from_pretrained(CLIP_REPO, local_files_only=True)`` read, offline."""
    repo = hf_home / "hub" / ("models--" + CLIP_REPO.replace("/", "--"))
    snapshot = write_clip_tokenizer(repo / "snapshots" / CLIP_REVISION, vocab_size=SD15_TEXT["vocab_size"])
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **SD15_TEXT}
    (snapshot / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(CLIP_REVISION, encoding="utf-8")
    print(f"wrote {snapshot}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webui", type=Path, required=True, help="WebUI root (holds models/ and extensions/)")
    parser.add_argument("--hf-home", type=Path, help="also write the CLIP tokenizer/config cache here (HF_HOME)")
    parser.add_argument("--sdxl", action="store_true", help="also write the SDXL checkpoint and AnimateDiff-XL module")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

    models, seed = args.webui / "models", args.seed
    torch.set_grad_enabled(False)
    if args.hf_home:
        write_clip_cache(args.hf_home)
    unet = seeded(seed + 1, lambda: UNet2DConditionModel(**SD15_UNET))
    text = text_encoder(seed + 2)
    vae = seeded(seed + 3, lambda: AutoencoderKL(**SD15_VAE))
    unet_ldm = unet_to_ldm(unet.state_dict(), unet.config)
    checkpoint = {**unet_ldm, **vae_to_ldm(vae.state_dict(), vae.config), **text_encoder_to_ldm(text.state_dict())}
    save(checkpoint, models / "Stable-diffusion" / "random-sd15.safetensors")
    del checkpoint, vae
    save(controlnet(unet_ldm, unet.config, seed + 4), models / "ControlNet" / "control_v11p_sd15_canny.safetensors")
    save(lora(unet, text, seed + 5), models / "Lora" / "random-lora.safetensors")
    del unet_ldm, unet, text
    folder = args.webui / "extensions" / "sd-webui-animatediff" / "model"
    modules = MOTION_MODULES + ((SDXL_MOTION_MODULE,) if args.sdxl else ())
    for offset, (name, config, positions) in enumerate(modules):
        adapter = seeded(seed + 6 + offset, lambda: MotionAdapter(**config))
        motion = motion_adapter_to_original(adapter.state_dict(), config["motion_max_seq_length"])
        if not positions:  # AnimateLCM's files hold no positional encodings (AnimateDiff then guesses AnimateLCM)
            motion = {k: v for k, v in motion.items() if not k.endswith(".pe")}
            assert not any("pe" in k for k in motion), "AnimateDiff would not guess AnimateLCM"
        save(motion, folder / name)
        if name == MOTION_LORA_FOR:
            save(motion_lora(motion, seed + 20), models / "Lora" / "mm_sd15_v2_lora_random.safetensors")
        del adapter, motion
    if args.sdxl:
        from control_lora import FILE_NAME, RANK, control_lora
        from sdxl_models import write_sdxl_checkpoint

        shapes = write_sdxl_checkpoint(models / "Stable-diffusion" / "random-sdxl.safetensors", seed + 30)
        save(control_lora(shapes, RANK, seed + 31), models / "ControlNet" / FILE_NAME)


if __name__ == "__main__":
    main()

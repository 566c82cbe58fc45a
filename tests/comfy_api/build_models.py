"""Write random-weight, full-size SD1.5 model files into a ComfyUI folder, in the formats ComfyUI and
AnimateDiff-Evolved load, so that a live server can run the node pack offline: a checkpoint in the original LDM key
layout (models/checkpoints/random-sd15.safetensors, the same tensors tests/webui_api/build_models.py writes for the
WebUI with the same seed) and an AnimateDiff v2 motion module (models/animatediff_models/mm_sd_v15_v2.safetensors).
Needs the standalone environment (diffusers). Usage:
``python tests/comfy_api/build_models.py --comfy DIR [--seed N]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from i4vgen_ext.backbones.configs import MM_V2, SD15_UNET, SD15_VAE  # noqa: E402
from i4vgen_ext.backbones.ldm_convert import motion_adapter_to_original, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402
from tests.webui_api.build_models import save, seeded, text_encoder  # noqa: E402

CHECKPOINT = "random-sd15.safetensors"
MOTION_MODEL = "mm_sd_v15_v2.safetensors"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", type=Path, required=True, help="ComfyUI root (holds models/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

    models, seed = args.comfy / "models", args.seed
    torch.set_grad_enabled(False)
    unet = seeded(seed + 1, lambda: UNet2DConditionModel(**SD15_UNET))
    text = text_encoder(seed + 2)
    vae = seeded(seed + 3, lambda: AutoencoderKL(**SD15_VAE))
    checkpoint = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
                  **text_encoder_to_ldm(text.state_dict())}
    save(checkpoint, models / "checkpoints" / CHECKPOINT)
    del checkpoint, unet, text, vae
    adapter = seeded(seed + 6, lambda: MotionAdapter(**MM_V2))
    save(motion_adapter_to_original(adapter.state_dict(), MM_V2["motion_max_seq_length"]),
         models / "animatediff_models" / MOTION_MODEL)


if __name__ == "__main__":
    main()

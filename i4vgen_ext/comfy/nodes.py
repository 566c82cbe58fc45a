"""The node pack: "I4VGen Sampler (AnimateDiff)" and "I4VGen Ranker Loader", in the category ``I4VGen``.

The sampler checks every input before its first UNet call, then runs ``core.compose.run_mode`` over
``ComfyDenoiser`` with the standalone seed contract (``core.compose.seeded_noises``), so a seed gives the CLI's video
on the same weights. It never changes the MODELs it is given (image mode samples a clone)."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

import torch

from ..core.compose import call_plan, plan_run, run_mode, seeded_noises
from ..core.settings import FIELD_BY_NAME, RANKERS
from ..errors import SettingsError
from . import checks, inputs, ranking, shim
from .anchor import encode_anchor
from .denoiser import ComfyDenoiser, image_model_for
from .latents import images_to_pil, latent_from_core_video
from .progress import RunProgress
from .report import build_report, report_text

CATEGORY = "I4VGen"
RANKER_TYPE = "I4VGEN_RANKER"


class I4VGenRankerLoader:
    """A ranker for the sampler: kind, a weights file ComfyUI lists under models/ImageReward, the fallback."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (RANKER_TYPE,)
    RETURN_NAMES = ("ranker",)
    FUNCTION = "load"
    DESCRIPTION = "Loads the model that scores I4VGen's candidate anchor images."

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        ranker, fallback = FIELD_BY_NAME["ranker"], FIELD_BY_NAME["ranker_fallback"]
        return {"required": {
            "ranker": (list(RANKERS), {"default": ranker.default, "tooltip": ranker.help}),
            "ranker_file": (ranking.file_choices(), {"tooltip": "A weights file in models/ImageReward (ImageReward: "
                                                                "ImageReward.pt; CLIP/PickScore: the model file of "
                                                                "their folder), or search the usual places."}),
            "ranker_fallback": (list(fallback.choices), {"default": fallback.default, "tooltip": fallback.help}),
        }}

    def load(self, ranker: str, ranker_file: str, ranker_fallback: str) -> Tuple[ranking.RankerChoice]:
        device = "cpu"
        try:
            device = str(shim.model_management().get_torch_device())
        except shim.HostUnavailable:
            pass
        return (ranking.load(ranker, ranker_file, ranker_fallback, device=device),)


class I4VGenSamplerAnimateDiff:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "IMAGE", "STRING")
    RETURN_NAMES = ("video", "candidates", "report")
    FUNCTION = "sample"
    OUTPUT_NODE = True
    DESCRIPTION = ("I4VGen text-to-video over AnimateDiff-Evolved: candidate anchor images with the image model, "
                   "ranking, NI-VSDS and regeneration with the video model (optionally EVS refinement).")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        required: Dict[str, Any] = {
            "image_model": ("MODEL", {"tooltip": "The checkpoint's MODEL, before AnimateDiff-Evolved."}),
            "video_model": ("MODEL", {"tooltip": "AnimateDiff-Evolved's MODEL (with the motion model)."}),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent": ("LATENT", {"tooltip": "Its batch is the number of frames, its size the video's."}),
        }
        required.update(inputs.setting_widgets())
        required["prompt"] = ("STRING", {"default": "", "multiline": True, "tooltip": inputs.PROMPT_HELP})
        return {"required": required, "optional": {
            "vae": ("VAE", {"tooltip": "Decodes the candidates (needed to rank them) and encodes an anchor image."}),
            "ranker": (RANKER_TYPE, {"tooltip": "Without it no ranking: candidate 0 (or anchor_index) is kept."}),
            "anchor_image": ("IMAGE", {"tooltip": "Use this image as the anchor: no candidates, no ranking."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, seed, steps, cfg, preset, candidates, nivsds_fraction, alpha_schedule, regen_strength,
                        anchor_index, mode, evs_strength, evs_t2v_step, evs_video_strength, evs_video_steps,
                        evs_fresh_bridge_noise, evs_inversion):
        values = dict(locals())
        values.pop("cls")
        try:
            inputs.build_settings(values, frames=FIELD_BY_NAME["frames"].default)
        except SettingsError as error:
            return str(error)
        return True

    def sample(self, image_model: Any, video_model: Any, positive: Any, negative: Any, latent: Dict[str, Any],
               prompt: str = "", vae: Any = None, ranker: Optional[ranking.RankerChoice] = None,
               anchor_image: Optional[torch.Tensor] = None, **widgets: Any):
        started = time.perf_counter()
        frames, height, width = checks.video_size(latent)
        settings = inputs.build_settings(widgets, frames=frames, width=width * 8, height=height * 8, prompt=prompt)
        checks.check_models(image_model, video_model)
        latent_format = video_model.model.latent_format
        choice = ranker if ranker is not None else ranking.RankerChoice("none", None, "none")
        ranks = choice.ranker is not None and settings.anchor_index < 0 and anchor_image is None
        if ranks and vae is None:
            raise SettingsError("vae", None, f"a VAE: ranker {choice.kind} scores decoded candidates")
        if ranks and not prompt.strip():
            raise SettingsError("prompt", prompt, f"the text ranker {choice.kind} scores the candidates against")
        anchor = None
        decoded: Dict[str, torch.Tensor] = {}
        if anchor_image is not None:
            anchor, decoded["images"] = encode_anchor(anchor_image, vae, latent_format, width=settings.width,
                                                      height=settings.height)

        denoiser = ComfyDenoiser(image_model_for(image_model, video_model), video_model, positive, negative,
                                 guidance=settings.guidance, steps=settings.steps, schedule=settings.schedule,
                                 seed=settings.seed)
        evs = settings.evs() if settings.runs_evs else None
        inverter = denoiser.variant(guidance=1.0) if evs is not None and evs.inversion else None
        plan = plan_run(settings.mode, settings, anchor_given=anchor is not None, evs=evs)
        calls = call_plan(settings.mode, settings, anchor_given=anchor is not None, evs=evs)
        progress = RunProgress(plan)

        def decode_images(candidates: torch.Tensor) -> list:
            decoded["images"] = vae.decode(latent_format.process_out(candidates.float().cpu())).float().cpu()
            return images_to_pil(decoded["images"])

        result = run_mode(denoiser, settings, seeded_noises(settings, height, width, evs=evs),
                          anchor=anchor, ranker=choice.ranker if ranks else None,
                          ranker_label=choice.label if ranks else None,
                          decode_images=decode_images if vae is not None else None,
                          inversion_denoiser=inverter, callback=progress)
        report = build_report(result, settings, call_plan=calls, sessions=denoiser.sessions,
                              context_length=checks.context_length(video_model),
                              seconds=time.perf_counter() - started)
        text = report_text(report)
        images = decoded.get("images", torch.zeros((0, height * 8, width * 8, 3)))
        video = {"samples": latent_from_core_video(result.video, latent_format)}
        return {"ui": {"i4vgen_report": [text]}, "result": (video, images, text)}


NODE_CLASS_MAPPINGS = {
    "I4VGenSamplerAnimateDiff": I4VGenSamplerAnimateDiff,
    "I4VGenRankerLoader": I4VGenRankerLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "I4VGenSamplerAnimateDiff": "I4VGen Sampler (AnimateDiff)",
    "I4VGenRankerLoader": "I4VGen Ranker Loader",
}


def setup() -> None:
    """What loading the pack does inside ComfyUI: register the ranker folder with ``folder_paths``."""
    ranking.register_folder()

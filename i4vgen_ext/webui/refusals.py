"""Why an A1111 job cannot run I4VGen: each check raises ``Refusal`` where it finds the reason, and
``install_refusal`` turns it into the job's error at its first sampling call, before any UNet call.

Details: docs/webui-host.md §Job.
"""
from __future__ import annotations

import logging
import types
from typing import Any

from ..errors import HostUnavailable, Refusal, SettingsError
from . import shim
from .animatediff import AnimateDiffJob
from .args import ScriptArgs
from .attention import select_layers
from .controlnet import check_units, is_controlnet_sampler, release_controlnet, stand_down_controlnet

log = logging.getLogger("i4vgen")

# AnimateDiff's img2vid options shape the init latent that I4VGen's anchor replaces (defaults: power 1, scale 32).
AD_IMG2VID_DEFAULTS = {"latent_power": 1, "latent_scale": 32, "latent_power_last": 1, "latent_scale_last": 32}


def bad_argument(error: SettingsError, suffix: str = "") -> Refusal:
    return Refusal(f"I4VGen: bad argument '{error.name}': {error}{suffix}")


def check_host() -> None:
    if shim.is_forge():
        raise Refusal("SD WebUI Forge is not supported: its AnimateDiff patches the UNet per sampling call and has no "
                      "inject/restore to switch the motion module off for the anchor images. Use AUTOMATIC1111 "
                      "1.9/1.10.")


def check_job(p: Any, ad: AnimateDiffJob) -> None:
    """Whether this AnimateDiff job can run I4VGen. Touches nothing."""
    if not ad.injected:
        raise Refusal("I4VGen: AnimateDiff is enabled but its motion module is not injected; see the console for "
                      "AnimateDiff's error (a motion module that does not fit the checkpoint is one cause: SD1.5 modules "
                      "go with SD1.5 checkpoints, AnimateDiff-XL and HotShot-XL with SDXL ones).")
    if getattr(ad.params, "prompt_scheduler", False) is None:  # set right after ``set_p`` in its before_process
        raise Refusal("I4VGen: AnimateDiff's own setup of this job failed (see the console for its error), so its "
                      "frames, prompt schedule and ControlNet wiring are not in place; I4VGen does not run on it.")
    model = p.sd_model
    if any(getattr(model, flag, False) for flag in ("is_sd2", "is_sd3", "is_ssd")) or \
            getattr(model, "parameterization", "eps") != "eps":
        raise Refusal("I4VGen needs an SD1.5-family or SDXL checkpoint (SD2, SD3, SSD-1B and v-prediction models are "
                      "not supported).")
    mm = getattr(ad.motion, "mm", None)
    xl_module = mm is not None and any(getattr(mm, flag, False) for flag in ("is_xl", "is_adxl", "is_hotshot"))
    if xl_module != bool(getattr(model, "is_sdxl", False)):  # AnimateDiff asserts this when it injects
        kind = getattr(mm, "mm_type", "an SDXL module" if xl_module else "an SD1.5 module")
        raise Refusal(f"I4VGen: motion module {ad.model_name} ({kind}) does not fit this "
                      f"{'SDXL' if getattr(model, 'is_sdxl', False) else 'SD1.5'} checkpoint: use an SD1.5 module on "
                      "SD1.5 checkpoints, AnimateDiff-XL or HotShot-XL on SDXL ones.")
    if getattr(p, "refiner_checkpoint", None) is not None:
        raise Refusal("I4VGen: the SDXL refiner is not supported (it swaps the UNet that carries the motion module "
                      "part way through the video's sampling). Turn the refiner off or untick I4VGen.")
    check_units(p)
    if str(getattr(p, "sampler_name", "")).upper() == "LCM":
        raise Refusal("The LCM sampler is not supported with I4VGen: its consistency denoiser does not return the "
                      "noise prediction NI-VSDS steps with. Choose another sampler (Euler, DPM++ 2M, DDIM, UniPC) or "
                      "untick I4VGen.")
    if getattr(ad.params, "freeinit_enable", False):
        raise Refusal("AnimateDiff's FreeInit replaces the same sampling step as I4VGen: turn one of them off.")
    try:
        if shim.module("sd_unet").current_unet is not None:
            raise Refusal("An alternative UNet (e.g. TensorRT) is active; it bypasses the motion module. Select "
                          "'None' for SD Unet.")
    except HostUnavailable:
        pass
    if "sample" in vars(p) and not is_controlnet_sampler(p):
        raise Refusal("Another extension has replaced this job's sampling step (p.sample); I4VGen cannot run "
                      "alongside it.")
    if is_img2img(p):
        check_img2img(p, ad)


def is_img2img(p: Any) -> bool:
    return isinstance(p, shim.processing().StableDiffusionProcessingImg2Img)


def check_img2img(p: Any, ad: AnimateDiffJob) -> None:
    """On img2img the init image is the anchor (paper 4.5); what cannot compose with that."""
    if not getattr(p, "init_images", None):
        raise Refusal("I4VGen on img2img makes the video from the init image: give one.")
    if getattr(p, "image_mask", None) is not None:
        raise Refusal("I4VGen on img2img uses the whole init image as the anchor: inpainting (a mask) is not "
                      "supported.")
    if getattr(ad.params, "last_frame", None) is not None:
        raise Refusal("AnimateDiff's 'last frame' (img2vid) is not supported with I4VGen: I4VGen's anchor replaces "
                      "AnimateDiff's init latent. Remove the last frame or untick I4VGen.")
    changed = [k for k, v in AD_IMG2VID_DEFAULTS.items() if getattr(ad.params, k, v) != v]
    if changed:
        raise Refusal(f"AnimateDiff's img2vid {', '.join(changed)} shape(s) the init latent that I4VGen's anchor "
                      "replaces: set them back to their defaults (latent power 1, latent scale 32) or untick I4VGen.")


def check_request(request: ScriptArgs, steps: int, *, img2img: bool = False) -> None:
    """Whether the mode/anchor/EVS combination fits a job of ``steps`` steps."""
    if img2img and not request.runs_i4vgen:
        raise Refusal("I4VGen: on img2img the init image is the anchor, so the mode must be 'i4vgen' or "
                      "'i4vgen+evs' (mode 'evs' refines AnimateDiff's own txt2img video).")
    if request.anchor_image is not None and not request.runs_i4vgen:
        raise Refusal("I4VGen: an anchor image needs mode 'i4vgen' or 'i4vgen+evs' (mode 'evs' refines "
                      "AnimateDiff's own video). Remove the image or change the mode.")
    if request.runs_evs:
        try:
            request.evs.plan(steps)
        except SettingsError as error:
            raise bad_argument(error, f" (with {steps} sampling steps)") from None


def check_sfi(request: ScriptArgs, p: Any, ad: AnimateDiffJob) -> None:
    """Whether EVS's Selective Feature Injection can run on this model and AnimateDiff setup."""
    if not (request.runs_evs and request.evs.sfi):
        return
    if ad.video_length > ad.context_size:
        raise Refusal(f"I4VGen: bad argument 'evs_sfi': Selective Feature Injection needs AnimateDiff to see all "
                      f"{ad.video_length} frames in one context window (context batch size {ad.context_size}): its "
                      "context windows shift from step to step, so the inversion's features would not line up with "
                      "the video steps' frames. Raise the context batch size to the number of frames or turn SFI off.")
    try:
        select_layers(p.sd_model.model.diffusion_model, request.evs.sfi_layers)
    except ValueError as error:
        raise Refusal(f"I4VGen: bad argument 'evs_sfi_layers': {request.evs.sfi_layers!r}: {error}") from None


def install_refusal(p: Any, refusal: Refusal) -> None:
    """Make the job stop at its first sampling call with the refusal. ControlNet's units stand down for the refused
    job (``stand_down_controlnet``, for a ControlNet that runs after I4VGen) and whatever it set up is undone before
    the error (``release_controlnet``, for one that ran before); nothing else is touched."""
    message = str(refusal)
    log.error(message)
    stand_down_controlnet(p)
    original = vars(p).get("sample")

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        if original is None:
            vars(self).pop("sample", None)
        else:
            self.sample = original
        release_controlnet(self)
        raise Refusal(message)

    p.sample = types.MethodType(refuse, p)

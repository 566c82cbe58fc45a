"""One I4VGen job inside A1111: the plan before sampling, the ``p.sample`` replacement, and putting ``p`` back.

The checks are in ``refusals``, ControlNet's part in ``controlnet``, the batch in ``batch``, the results in
``results``. Details (hook plan): docs/webui-host.md §Job.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..core.anchor_image import to_rgb8
from ..errors import I4VGenError, Refusal, SettingsError
from . import shim
from .anchor import describe_anchor
from .animatediff import find_animatediff
from .args import is_enabled, misshapen_args, parse_script_args
from .batch import sample_batch
from .control import JobControl
from .controlnet import adopt_api_units, forget_marked_conds, is_controlnet_sampler, lend_sampler, release_controlnet
from .infotext import INFOTEXT_KEY
from .plan import JobPlan, chunk_size_for, option, resolve_settings
from .progress import jobs_per_batch, plan_job_count
from .ranking import RankerCache, resolve_ranker_folder
from .refusals import bad_argument, check_host, check_job, check_request, check_sfi, install_refusal, is_img2img
from .results import finish

__all__ = ["I4VGenError", "adopt_api_units", "finish", "install_sampler", "is_enabled", "option", "prepare"]
log = logging.getLogger("i4vgen")


# Script.process ------------------------------------------------------------------------------------------------
def prepare(p: Any, args: Sequence[Any]) -> Optional[JobPlan]:
    """Plan the job, or arrange its refusal. Returns None when I4VGen stays out of this job."""
    try:
        return plan_job(p, args)
    except Refusal as refusal:
        install_refusal(p, refusal)
        return None


def plan_job(p: Any, args: Sequence[Any]) -> Optional[JobPlan]:
    """The job's plan; None when I4VGen stays out of it; ``Refusal`` when it cannot run."""
    if not args:
        return None
    misshapen = misshapen_args(args)
    if misshapen is not None:
        raise Refusal(misshapen)
    if not is_enabled(args) and not isinstance(args[0], Mapping):
        return None  # a disabled panel: its values (an uploaded image among them) are not even read
    try:
        request = parse_script_args(args)
    except SettingsError as error:
        raise bad_argument(error) from None
    if not request.enable:
        return None
    check_host()
    ad = find_animatediff(p)
    if ad is None:
        message = ("I4VGen is enabled but AnimateDiff is not installed or not enabled for this job; the job ran "
                   "unchanged. Tick AnimateDiff as well to make a video with I4VGen.")
        log.warning(message)
        p.comment(message)
        return None
    check_job(p, ad)
    if is_img2img(p):
        if request.anchor_image is not None:
            raise Refusal("I4VGen: on img2img the init image is the anchor; clear the panel's anchor image.")
        try:
            image = to_rgb8(p.init_images[0])
        except (AttributeError, OSError, ValueError) as error:
            raise Refusal(f"I4VGen: the init image cannot be read ({error}).") from None
        request = dataclasses.replace(request, anchor_image=image, anchor_label=describe_anchor(image),
                                      anchor_from_init=True)
    default_preset = option("i4vgen_default_preset", "official")
    models_dir = option("i4vgen_reward_model_dir", "") or getattr(shim.shared(), "models_path", None)
    try:
        settings = resolve_settings(p, request, default_preset, p.all_seeds[0])
        check_request(request, int(p.steps), img2img=is_img2img(p))
        check_sfi(request, p, ad)
        # a folder name inside <models>/ImageReward only; refused here, before any sampling or file access
        resolve_ranker_folder(settings.ranker_path, models_dir)
    except SettingsError as error:
        raise bad_argument(error) from None
    size = chunk_size_for(ad, settings.candidates)
    plan = JobPlan(
        request=request, ad=ad, settings=settings, chunk_size=size, chunks=-(-settings.candidates // size),
        default_preset=default_preset, models_dir=models_dir,
        keep_ranker=bool(option("i4vgen_keep_ranker_loaded", False)),
    )
    if not option("pad_cond_uncond", False) and not option("pad_cond_uncond_v0", False) and cond_lengths_differ(p):
        log.warning("I4VGen: AnimateDiff needs 'Pad prompt/negative prompt' (Settings > Optimizations) when the "
                    "prompt and negative prompt have different token lengths.")
    jobs = jobs_per_batch(plan.chunks, mode=request.mode, anchor_image=request.anchor_image is not None)
    plan_job_count(shim.state(), int(p.n_iter), jobs, hires=bool(getattr(p, "enable_hr", False)))
    p.extra_generation_params[INFOTEXT_KEY] = infotext_for(plan)
    return plan


def cond_lengths_differ(p: Any) -> bool:
    """Whether the first prompt and negative prompt fill different numbers of 75-token chunks, the only case in
    which unpadded conds differ in length (``sd_hijack.model_hijack.get_prompt_lengths`` -> (tokens, target)).
    Extra-network tags still in the text are counted, so this errs towards warning; unknown counts as yes."""
    prompts, negatives = getattr(p, "all_prompts", None), getattr(p, "all_negative_prompts", None)
    if not prompts or not negatives:
        return True
    try:
        lengths = shim.module("sd_hijack").model_hijack.get_prompt_lengths
        return lengths(prompts[0])[1] != lengths(negatives[0])[1]
    except Exception:  # another host or model family: keep the warning
        return True


def infotext_for(plan: JobPlan) -> Callable[..., Optional[str]]:
    """Per-image infotext value: the outcome of the batch the image belongs to (``create_infotext`` calls it with
    its locals; ``p.iteration`` is the batch being written)."""

    def value(p: Any = None, **_: Any) -> Optional[str]:
        iteration = getattr(p, "iteration", 0)
        for outcome in plan.outcomes:
            if outcome.iteration == iteration:
                return outcome.infotext
        return None

    return value


# Script.process_batch ------------------------------------------------------------------------------------------
def install_sampler(p: Any, plan: JobPlan, ranker_cache: RankerCache) -> None:
    """Lend ``p.sample`` to I4VGen for this batch; it hands itself back when the batch's sampling ends."""
    if "sample" in vars(p) and not is_controlnet_sampler(p):  # a refusal is already installed
        return

    def sample(self: Any, conditioning: Any, unconditional_conditioning: Any, seeds: Any, subseeds: Any,
               subseed_strength: Any, prompts: Any) -> torch.Tensor:
        try:
            control = JobControl.for_job(self, int(self.batch_size))
            if control is not None:
                control.check()
        except Refusal as refusal:
            give_back()
            log.error(str(refusal))
            release_controlnet(self)
            forget_marked_conds()
            raise
        try:
            samples = sample_batch(self, plan, ranker_cache, control)
        finally:
            give_back()
        if getattr(self, "enable_hr", False):
            return hires_pass(self, samples, seeds, subseeds, subseed_strength, prompts)
        return samples

    give_back = lend_sampler(p, sample)


def hires_pass(p: Any, samples: torch.Tensor, seeds: Any, subseeds: Any, subseed_strength: Any, prompts: Any) -> Any:
    """Hires. fix over the finished video, exactly as txt2img's own ``sample`` runs it after its first pass
    (``modules/processing.py`` v1.10.1): every frame upscaled and refined with the motion module in, as AnimateDiff's
    video would be. An interrupted video comes back as it is (``sample_hr_pass`` checks the interrupt)."""
    devices = shim.devices()
    decoded = None
    if p.latent_scale_mode is None:
        decoded = torch.stack(shim.processing().decode_latent_batch(
            p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)).to(dtype=torch.float32)
    sd_models = shim.module("sd_models")
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=p.hr_checkpoint_info)
    devices.torch_gc()
    return p.sample_hr_pass(samples, decoded, seeds, subseeds, subseed_strength, prompts)


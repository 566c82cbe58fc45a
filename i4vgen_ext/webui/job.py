"""One I4VGen job inside A1111: checks before sampling, the ``p.sample`` replacement, and putting ``p`` back.

Details (hook plan): docs/webui-host.md §Job.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ..core.anchor_image import to_rgb8
from ..core.compose import RunNoises, RunObserver, run_mode
from ..core.noise import Noises
from ..core.settings import I4VGenSettings, SettingsError
from . import shim
from .animatediff import AnimateDiffJob, find_animatediff
from .anchor import describe_anchor, encode_anchor
from .args import ScriptArgs, build_settings, is_enabled, misshapen_args, parse_script_args
from .attention import select_layers
from .backbone import HostDenoiser, from_host_video, latent_shape, to_host_video
from .infotext import INFOTEXT_KEY, infotext_value, parse_infotext_value, stopped_value
from .progress import StageProgress, jobs_per_batch, plan_job_count
from .ranking import RankerCache, resolve_ranker_folder
from .refine import DRAWS_BEFORE_EVS, host_evs_noises

log = logging.getLogger("i4vgen")

# Fields of ``p`` that I4VGen lends out during a batch; all are put back, and tests compare them.
BORROWED_FIELDS = ("rng", "seeds", "all_seeds", "batch_size", "iteration", "denoising_strength")


class I4VGenError(RuntimeError):
    """A refusal or a failure the user can act on; the message says what and how."""


@dataclass
class BatchOutcome:
    iteration: int
    infotext: str
    anchor_index: Optional[int]  # -1: the user's anchor image; None: no anchor (mode "evs")
    ranker: Optional[str]
    scores: Optional[List[float]]
    candidate_images: Optional[list]
    unet_calls: Dict[str, int]  # per stage, then "total"
    seconds: Dict[str, float]
    interrupted: bool = False
    stopped: str = ""  # "interrupted during NI-VSDS", ...
    progress_plan: Dict[str, int] = field(default_factory=dict)  # steps per stage, planned before the first call
    progress_reported: Dict[str, int] = field(default_factory=dict)


@dataclass
class JobPlan:
    request: ScriptArgs
    ad: AnimateDiffJob
    settings: I4VGenSettings  # as resolved for the first batch (validated before sampling)
    chunk_size: int
    chunks: int
    default_preset: str
    models_dir: Optional[str]
    keep_ranker: bool
    outcomes: List[BatchOutcome] = field(default_factory=list)
    progress_log: List[tuple] = field(default_factory=list)


def option(name: str, default: Any) -> Any:
    try:
        return shim.opts().data.get(name, default)
    except shim.HostUnavailable:
        return default


# Checks -----------------------------------------------------------------------------------------------------------
def refusal(p: Any, ad: Optional[AnimateDiffJob]) -> Optional[str]:
    """Why this job cannot run I4VGen (None when it can). Does not touch anything."""
    if shim.is_forge():
        return ("SD WebUI Forge is not supported: its AnimateDiff patches the UNet per sampling call and has no "
                "inject/restore to switch the motion module off for the anchor images. Use AUTOMATIC1111 1.9/1.10.")
    if ad is None:
        return None  # handled by the caller: the job runs untouched
    if not ad.injected:
        return ("I4VGen: AnimateDiff is enabled but its motion module is not injected; see the console for "
                "AnimateDiff's error (an SDXL or HotShot-XL module on an SD1.5 checkpoint is one cause: I4VGen needs "
                "an SD1.5 checkpoint and an SD1.5 motion module).")
    model = p.sd_model
    if any(getattr(model, flag, False) for flag in ("is_sdxl", "is_sd2", "is_sd3", "is_ssd")) or \
            getattr(model, "parameterization", "eps") != "eps":
        return "I4VGen needs an SD1.5-family checkpoint (SDXL, SD2 and v-prediction models are not supported)."
    mm = getattr(ad.motion, "mm", None)
    if mm is not None and any(getattr(mm, flag, False) for flag in ("is_xl", "is_adxl", "is_hotshot")):
        return f"I4VGen needs an SD1.5 motion module; {ad.model_name} is {getattr(mm, 'mm_type', 'an SDXL module')}."
    if controlnet_units_enabled(p):
        return ("ControlNet is not supported with I4VGen yet: the candidate anchors are a batch of separate images, "
                "which ControlNet's per-frame control (AnimateDiff V2V) does not line up with. Turn the ControlNet "
                "units off or untick I4VGen.")
    if str(getattr(p, "sampler_name", "")).upper() == "LCM":
        return ("The LCM sampler is not supported with I4VGen: its consistency denoiser does not return the noise "
                "prediction NI-VSDS steps with. Choose another sampler (Euler, DPM++ 2M, DDIM, UniPC) or untick I4VGen.")
    if getattr(ad.params, "freeinit_enable", False):
        return "AnimateDiff's FreeInit replaces the same sampling step as I4VGen: turn one of them off."
    try:
        if shim.module("sd_unet").current_unet is not None:
            return "An alternative UNet (e.g. TensorRT) is active; it bypasses the motion module. Select 'None' for SD Unet."
    except shim.HostUnavailable:
        pass
    if "sample" in vars(p):
        return "Another extension has replaced this job's sampling step (p.sample); I4VGen cannot run alongside it."
    return img2img_refusal(p, ad) if is_img2img(p) else None


def controlnet_script(p: Any) -> Optional[Any]:
    """sd-webui-controlnet's always-on script in this job's runner (title "ControlNet"), or None."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        try:
            if script.title() == "ControlNet":
                return script
        except Exception:
            continue
    return None


def controlnet_units_enabled(p: Any) -> bool:
    """Whether sd-webui-controlnet has an enabled unit in this job (its script's args are units: objects with
    ``enabled``, or dicts under the API)."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None) or ()
    if script is None:
        return False
    for unit in args[script.args_from:script.args_to]:
        enabled = unit.get("enabled") if isinstance(unit, Mapping) else getattr(unit, "enabled", False)
        if enabled:
            return True
    return False


def stand_down_controlnet(p: Any) -> None:
    """Switch this job's ControlNet units off (copies: the panel's own unit objects are not touched) when I4VGen
    has refused the job: the units' ``process`` then hooks nothing that the failed job would leave behind."""
    script = controlnet_script(p)
    args = getattr(p, "script_args", None)
    if script is None or args is None:
        return
    args = list(args)
    for index in range(script.args_from, min(script.args_to, len(args))):
        unit = args[index]
        if isinstance(unit, Mapping):
            args[index] = {**unit, "enabled": False}
        elif getattr(unit, "enabled", False):
            unit = copy.copy(unit)
            unit.enabled = False
            args[index] = unit
    p.script_args = args


def release_controlnet(p: Any) -> None:
    """Run ControlNet's ``postprocess`` for a job that I4VGen stops before sampling. ControlNet hooks the UNet in
    its ``process`` and undoes it only in ``postprocess``, which A1111 skips when a job raises; seen on a live
    WebUI: every later plain job differed until a ControlNet job ran to its end."""
    script = controlnet_script(p)
    if script is None:
        return
    finished = types.SimpleNamespace(images=[], extra_generation_params={}, infotexts=[], comments="")
    try:
        script.postprocess(p, finished, *p.script_args[script.args_from:script.args_to])
    except Exception as error:  # its cleanup failing must not hide the refusal
        log.warning(f"I4VGen: ControlNet's cleanup after the refusal failed: {error}")


def is_img2img(p: Any) -> bool:
    return isinstance(p, shim.processing().StableDiffusionProcessingImg2Img)


# AnimateDiff's img2vid options shape the init latent that I4VGen's anchor replaces (defaults: power 1, scale 32).
AD_IMG2VID_DEFAULTS = {"latent_power": 1, "latent_scale": 32, "latent_power_last": 1, "latent_scale_last": 32}


def img2img_refusal(p: Any, ad: AnimateDiffJob) -> Optional[str]:
    """On img2img the init image is the anchor (paper 4.5); what cannot compose with that."""
    if not getattr(p, "init_images", None):
        return "I4VGen on img2img makes the video from the init image: give one."
    if getattr(p, "image_mask", None) is not None:
        return "I4VGen on img2img uses the whole init image as the anchor: inpainting (a mask) is not supported."
    if getattr(ad.params, "last_frame", None) is not None:
        return ("AnimateDiff's 'last frame' (img2vid) is not supported with I4VGen: I4VGen's anchor replaces "
                "AnimateDiff's init latent. Remove the last frame or untick I4VGen.")
    changed = [k for k, v in AD_IMG2VID_DEFAULTS.items() if getattr(ad.params, k, v) != v]
    if changed:
        return (f"AnimateDiff's img2vid {', '.join(changed)} shape(s) the init latent that I4VGen's anchor replaces: "
                "set them back to their defaults (latent power 1, latent scale 32) or untick I4VGen.")
    return None


def chunk_size_for(ad: AnimateDiffJob, candidates: int) -> int:
    """Anchor images per sampling run: AnimateDiff's context size, so an image batch never holds more latents
    than one video UNet call already does (cond + uncond)."""
    return max(1, min(candidates, ad.context_size))


def request_refusal(request: ScriptArgs, steps: int, *, img2img: bool = False) -> Optional[str]:
    """What is wrong with the mode/anchor/EVS combination for a job of ``steps`` steps (None when nothing)."""
    if img2img and not request.runs_i4vgen:
        return ("I4VGen: on img2img the init image is the anchor, so the mode must be 'i4vgen' or 'i4vgen+evs' "
                "(mode 'evs' refines AnimateDiff's own txt2img video).")
    if request.anchor_image is not None and not request.runs_i4vgen:
        return ("I4VGen: an anchor image needs mode 'i4vgen' or 'i4vgen+evs' (mode 'evs' refines AnimateDiff's own "
                "video). Remove the image or change the mode.")
    if request.runs_evs:
        try:
            request.evs.plan(steps)
        except SettingsError as error:
            return f"I4VGen: bad argument '{error.name}': {error} (with {steps} sampling steps)"
    return None


def sfi_refusal(request: ScriptArgs, p: Any, ad: AnimateDiffJob) -> Optional[str]:
    """What stops EVS's Selective Feature Injection on this model and AnimateDiff setup (None when nothing)."""
    if not (request.runs_evs and request.evs.sfi):
        return None
    if ad.video_length > ad.context_size:
        return (f"I4VGen: bad argument 'evs_sfi': Selective Feature Injection needs AnimateDiff to see all "
                f"{ad.video_length} frames in one context window (context batch size {ad.context_size}): its context "
                "windows shift from step to step, so the inversion's features would not line up with the video "
                "steps' frames. Raise the context batch size to the number of frames or turn SFI off.")
    try:
        select_layers(p.sd_model.model.diffusion_model, request.evs.sfi_layers)
    except ValueError as error:
        return f"I4VGen: bad argument 'evs_sfi_layers': {request.evs.sfi_layers!r}: {error}"
    return None


def resolve_settings(p: Any, request: ScriptArgs, default_preset: str, iteration_seed: int) -> I4VGenSettings:
    prompts = p.prompts if getattr(p, "prompts", None) else p.all_prompts
    negatives = p.negative_prompts if getattr(p, "negative_prompts", None) else p.all_negative_prompts
    return build_settings(
        request, prompt=str(prompts[0]), negative_prompt=str(negatives[0]), seed=iteration_seed,
        frames=int(p.batch_size), steps=int(p.steps), guidance=float(p.cfg_scale), default_preset=default_preset,
    )


# Script.process ------------------------------------------------------------------------------------------------
def prepare(p: Any, args: Sequence[Any]) -> Optional[JobPlan]:
    """Plan the job, or arrange its refusal. Returns None when I4VGen stays out of this job."""
    if not args:
        return None
    misshapen = misshapen_args(args)
    if misshapen is not None:
        install_refusal(p, misshapen)
        return None
    if not is_enabled(args) and not isinstance(args[0], Mapping):
        return None  # a disabled panel: its values (an uploaded image among them) are not even read
    try:
        request = parse_script_args(args)
    except SettingsError as error:
        install_refusal(p, f"I4VGen: bad argument '{error.name}': {error}")
        return None
    if not request.enable:
        return None
    ad = find_animatediff(p)
    reason = refusal(p, ad)
    if reason is not None:
        install_refusal(p, reason)
        return None
    if ad is None:
        message = ("I4VGen is enabled but AnimateDiff is not installed or not enabled for this job; the job ran "
                   "unchanged. Tick AnimateDiff as well to make a video with I4VGen.")
        log.warning(message)
        p.comment(message)
        return None
    if is_img2img(p):
        if request.anchor_image is not None:
            install_refusal(p, "I4VGen: on img2img the init image is the anchor; clear the panel's anchor image.")
            return None
        try:
            image = to_rgb8(p.init_images[0])
        except (AttributeError, OSError, ValueError) as error:
            install_refusal(p, f"I4VGen: the init image cannot be read ({error}).")
            return None
        request = dataclasses.replace(request, anchor_image=image, anchor_label=describe_anchor(image),
                                      anchor_from_init=True)
    default_preset = option("i4vgen_default_preset", "official")
    try:
        settings = resolve_settings(p, request, default_preset, p.all_seeds[0])
    except SettingsError as error:
        install_refusal(p, f"I4VGen: bad argument '{error.name}': {error}")
        return None
    reason = request_refusal(request, int(p.steps), img2img=is_img2img(p)) or sfi_refusal(request, p, ad)
    if reason is not None:
        install_refusal(p, reason)
        return None
    models_dir = option("i4vgen_reward_model_dir", "") or getattr(shim.shared(), "models_path", None)
    try:  # a folder name inside <models>/ImageReward only; refused here, before any sampling or file access
        resolve_ranker_folder(settings.ranker_path, models_dir)
    except SettingsError as error:
        install_refusal(p, f"I4VGen: bad argument '{error.name}': {error}")
        return None
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


def install_refusal(p: Any, message: str) -> None:
    """Make the job stop at its first sampling call with ``message``. ControlNet's units stand down for the refused
    job (``stand_down_controlnet``, for a ControlNet that runs after I4VGen) and whatever it set up is undone before
    the error (``release_controlnet``, for one that ran before); nothing else is touched."""
    log.error(message)
    stand_down_controlnet(p)
    original = vars(p).get("sample")

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        if original is None:
            vars(self).pop("sample", None)
        else:
            self.sample = original
        release_controlnet(self)
        raise I4VGenError(message)

    p.sample = types.MethodType(refuse, p)


# Script.process_batch ------------------------------------------------------------------------------------------
def install_sampler(p: Any, plan: JobPlan, ranker_cache: RankerCache) -> None:
    """Lend ``p.sample`` to I4VGen for this batch; it hands itself back when the batch's sampling ends."""
    if "sample" in vars(p):  # a refusal is already installed
        return

    def sample(self: Any, conditioning: Any, unconditional_conditioning: Any, seeds: Any, subseeds: Any,
               subseed_strength: Any, prompts: Any) -> torch.Tensor:
        try:
            samples = sample_batch(self, plan, ranker_cache)
        finally:
            vars(self).pop("sample", None)
        if getattr(self, "enable_hr", False):
            return hires_pass(self, samples, seeds, subseeds, subseed_strength, prompts)
        return samples

    p.sample = types.MethodType(sample, p)


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


def uninstall_sampler(p: Any) -> None:
    vars(p).pop("sample", None)


# The batch -------------------------------------------------------------------------------------------------------
def candidate_rngs(p: Any, candidates: int, chunk_size: int) -> List[Any]:
    """Candidate k starts from the host's noise for seed ``seeds[0] + k``, i.e. frame k's noise when k < F
    (``modules/rng.py`` ``ImageRNG``: same randn source, subseed and seed-resize handling as the job)."""
    ImageRNG = shim.rng().ImageRNG
    seeds = [int(p.seeds[0]) + k for k in range(candidates)]
    subseeds = [int(p.subseeds[0]) + k for k in range(candidates)]
    return [
        ImageRNG(latent_shape(p), seeds[i:i + chunk_size], subseeds=subseeds[i:i + chunk_size],
                 subseed_strength=p.subseed_strength, seed_resize_from_h=p.seed_resize_from_h,
                 seed_resize_from_w=p.seed_resize_from_w)
        for i in range(0, candidates, chunk_size)
    ]


def decoder(p: Any, progress: StageProgress) -> Callable[[torch.Tensor], list]:
    from PIL import Image

    def decode(latents: torch.Tensor) -> list:
        progress.stage("ranking")
        state = shim.state()
        state.sampling_steps, state.sampling_step = 1, 0
        processing, devices = shim.processing(), shim.devices()
        decoded = processing.decode_latent_batch(p.sd_model, latents, target_device=devices.cpu, check_for_nans=True)
        images = []
        for sample in decoded:
            array = ((sample.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            images.append(Image.fromarray(array))
        return images

    return decode


class _BatchObserver(RunObserver):
    """The run's phase boundaries in the WebUI: a video stage that EVS follows ends its progress job, keeps its
    video for an interrupt during EVS, and EVS gets one bar."""

    def __init__(self, denoiser: HostDenoiser, progress: StageProgress, runs_evs: bool) -> None:
        self.denoiser, self.progress, self.runs_evs = denoiser, progress, runs_evs

    def phase_started(self, phase: str, steps: int) -> None:
        if phase == "evs":
            self.progress.evs_started(steps)

    def phase_finished(self, phase: str, latents: torch.Tensor) -> None:
        if phase == "video" and self.runs_evs:
            self.progress.stage_finished()
            self.denoiser.keep_partial(latents)


def sample_batch(p: Any, plan: JobPlan, ranker_cache: RankerCache) -> torch.Tensor:
    """One batch (one video of ``p.batch_size`` frames) in place of ``p.sample``: the core's ``run_mode`` over the
    host's denoiser, with the host's noise."""
    request = plan.request
    progress = StageProgress(shim.state(), tqdm=getattr(shim.shared(), "total_tqdm", None), anchor_chunks=plan.chunks)
    progress.begin()
    saved = {name: vars(p)[name] for name in BORROWED_FIELDS if name in vars(p)}
    frames = int(p.batch_size)
    denoiser: Optional[HostDenoiser] = None
    settings: Optional[I4VGenSettings] = None
    noises: Optional[RunNoises] = None
    try:
        settings = resolve_settings(p, request, plan.default_preset, p.seeds[0])
        ranked = request.runs_i4vgen and request.anchor_image is None
        rngs = candidate_rngs(p, settings.candidates, plan.chunk_size) if ranked else []
        denoiser = HostDenoiser(p, plan.ad, settings, anchor_rngs=rngs, chunk_size=plan.chunk_size,
                                on_anchor_chunk=progress.on_anchor_chunk, on_stage=progress.stage)
        seconds: Dict[str, float] = {}
        anchor, ranker, label = None, None, None
        if request.anchor_image is not None:  # paper 4.5: no candidates, no ranker
            progress.stage("encode-anchor")
            started = time.perf_counter()
            anchor = encode_anchor(p, request.anchor_image, sample=request.anchor_sample, seed=int(p.seeds[0]))
            anchor = anchor.to(shim.devices().device)
            seconds["encode_anchor"] = time.perf_counter() - started
        elif ranked:
            try:
                ranker, label = ranker_cache.get(settings, device=shim.devices().device, models_dir=plan.models_dir)
            except Exception as error:  # RankerLoadError (and friends): fallback 'error' stops the job here
                raise I4VGenError(f"I4VGen: {error}\n(set 'ranker fallback' to 'none' to continue with candidate 0, "
                                  "or choose a manual anchor index)") from error
        noises = host_noises(p, request, settings, rngs)
        if request.runs_i4vgen:
            denoiser.bind_job_sampler()
        evs = settings.evs() if request.runs_evs else None
        result = run_mode(
            denoiser, settings, noises, evs=evs, anchor=anchor, ranker=ranker, ranker_label=label,
            decode_images=decoder(p, progress), keep_candidate_images=request.return_candidates,
            evs_denoiser=denoiser.variant(phase="evs") if evs is not None else None,
            # Inversion is run without CFG (guidance 1), as DDIM inversion usually is; EVS does not say.
            inversion_denoiser=denoiser.variant(phase="evs-inversion", guidance=1.0) if evs and evs.inversion else None,
            callback=partial_keeper(denoiser, progress), observer=_BatchObserver(denoiser, progress, request.runs_evs),
            anchor_passes=len(rngs) or 1,
        )
        seconds.update(result.seconds)
        calls = {k: v for k, v in result.unet_calls.items() if k != "total"}
        outcome = BatchOutcome(int(p.iteration), "", result.anchor_index, result.ranker, result.scores,
                               result.candidate_images, calls, seconds, progress_plan=result.plan,
                               progress_reported=result.reported)
        record(p, plan, settings, outcome)
        return to_host_video(result.video)
    except shim.interrupted_exception():
        action = "skipped" if shim.state().skipped else "interrupted"
        log.warning(f"I4VGen: video {int(p.iteration) + 1} {action} during {progress.current}; the frames are the "
                    "unfinished video")
        value = stopped_value(settings, request, action, progress.current) if settings is not None else ""
        plan.outcomes.append(BatchOutcome(int(p.iteration), value, None, None, None, None, {}, {}, interrupted=True,
                                          stopped=f"{action} during {progress.current}"))
        return unfinished_video(denoiser, noises, frames, p)
    finally:
        if denoiser is not None:
            denoiser.motion.close()
        for name in BORROWED_FIELDS:
            if name in saved:
                setattr(p, name, saved[name])
            else:
                vars(p).pop(name, None)
        if not plan.ad.injected:  # never hand control back with the module ejected
            plan.ad.motion.inject(p.sd_model, plan.ad.model_name)
        if not plan.keep_ranker:
            ranker_cache.release()
        progress.end()
        plan.progress_log.extend(progress.log)


def unfinished_video(denoiser: Optional[HostDenoiser], noises: Optional[RunNoises], frames: int, p: Any) -> torch.Tensor:
    """What an interrupted video returns, like a plain job's sampler: the latent being denoised when it stopped
    (NI-VSDS's noised video, the regeneration sampler's latent), or, before any video exists, the noise the video
    starts from: distinct frames, never a still that the GIF writer folds into one frame."""
    partial = denoiser.last_video if denoiser is not None else None
    if partial is not None and partial.shape[0] == frames:
        return partial
    start = None
    if noises is not None:
        start = noises.i4vgen.nivsds if noises.i4vgen is not None else noises.plain
    if start is not None and start.shape[2] == frames:
        return to_host_video(start).to(shim.devices().device)
    return torch.zeros((frames, *latent_shape(p)), device=shim.devices().device)


def partial_keeper(denoiser: HostDenoiser, progress: StageProgress) -> Callable[[Any], None]:
    """The core's step callback: the progress bar, and the stage's current video kept for an interrupt."""

    def on_step(event: Any) -> None:
        if event.latents is not None:
            denoiser.keep_partial(event.latents)
        progress(event)

    return on_step


def host_noises(p: Any, request: ScriptArgs, settings: I4VGenSettings, rngs: List[Any]) -> RunNoises:
    """The host's own noise: candidate k from seed ``seeds[0] + k``; the batch's first ``p.rng`` draw starts
    AnimateDiff's video (mode "evs") or is NI-VSDS's fixed noise, the next one regeneration's fresh noise; EVS
    continues private copies of the per-frame generators (``refine.host_evs_noises``)."""
    evs = None
    if request.runs_evs:
        draws, fresh = DRAWS_BEFORE_EVS[request.mode], settings.evs_fresh_bridge_noise
        evs = lambda shape: host_evs_noises(p, draws_before=draws, fresh_bridge_noise=fresh)  # noqa: E731
    if not request.runs_i4vgen:
        return RunNoises(plain=from_host_video(p.rng.next()), evs=evs)
    if rngs:
        candidate_noise = torch.cat([r.next() for r in rngs]).float()
    else:
        candidate_noise = torch.zeros((0, *latent_shape(p)))
    video_noise = p.rng.next()
    if p.scripts is not None and hasattr(p.scripts, "process_before_every_sampling"):
        p.scripts.process_before_every_sampling(p=p, x=video_noise, noise=video_noise, c=p.c, uc=p.uc)
    regeneration_noise = p.rng.next()
    return RunNoises(Noises(candidate_noise, from_host_video(video_noise.float()),
                            from_host_video(regeneration_noise.float())), evs=evs)


def record(p: Any, plan: JobPlan, settings: I4VGenSettings, outcome: BatchOutcome) -> None:
    """The batch's infotext (settings, mode, EVS settings, UNet calls per stage and in total) and log line."""
    outcome.unet_calls["total"] = sum(v for k, v in outcome.unet_calls.items() if k != "total")
    outcome.infotext = infotext_value(
        settings, anchor_index=outcome.anchor_index, ranker=outcome.ranker, unet_calls=outcome.unet_calls,
        return_candidates=plan.request.return_candidates, extras=plan.request.extra_record(),
    )
    plan.outcomes.append(outcome)
    log.info(f"I4VGen: {summary(outcome)}; {timing(outcome)}")


def summary(outcome: BatchOutcome) -> str:
    if outcome.anchor_index is None:
        chosen = ""
    elif outcome.anchor_index < 0:
        chosen = "anchor from your image, "
    else:
        chosen = f"anchor {outcome.anchor_index} ({outcome.ranker}), "
    return f"{chosen}UNet calls {outcome.unet_calls}"


def timing(outcome: BatchOutcome) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items())


# Script.postprocess ------------------------------------------------------------------------------------------------
def caption(index: int, outcome: BatchOutcome) -> str:
    score = f", score {outcome.scores[index]:.3f}" if outcome.scores else ""
    mark = " ★ anchor" if index == outcome.anchor_index else ""
    prefix = f"video {outcome.iteration + 1}, " if outcome.iteration else ""
    return f"{prefix}candidate {index}{score}{mark}"


def finish(p: Any, processed: Any, plan: JobPlan) -> List[tuple]:
    """Plain-text infotext for the API's ``info`` (a callable would serialise as null), a comment per video, and
    the candidate images appended after AnimateDiff's outputs. Returns (image, caption) pairs for the gallery."""
    uninstall_sampler(p)
    done = [o for o in plan.outcomes if not o.interrupted]
    stopped = [o for o in plan.outcomes if o.interrupted and o.infotext]
    if done or stopped:
        p.extra_generation_params[INFOTEXT_KEY] = (done or stopped)[0].infotext
    else:
        p.extra_generation_params.pop(INFOTEXT_KEY, None)
    for outcome in plan.outcomes:
        if outcome.interrupted:
            p.comment(f"I4VGen video {outcome.iteration + 1} ({plan.request.mode}) {outcome.stopped}: "
                      "its frames are the unfinished video")
        else:
            p.comment(f"I4VGen video {outcome.iteration + 1} ({plan.request.mode}): {summary(outcome)}, "
                      f"{timing(outcome)}")
    if processed is not None:
        processed.comments = "".join(f"{c}\n" for c in p.comments)
    gallery: List[tuple] = []
    for outcome in done:
        for index, image in enumerate(outcome.candidate_images or []):
            image.info["parameters"] = candidate_infotext(p, outcome, index)  # PNG Info -> this anchor
            gallery.append((image, caption(index, outcome)))
    if plan.request.return_candidates and gallery and processed is not None:
        if plan.ad.injected:
            log.warning("I4VGen: candidates not added to the results: I4VGen's postprocess ran before "
                        "AnimateDiff's (check the extension order, metadata.ini)")
        else:
            for image, _ in gallery:
                processed.images.append(image)
                processed.infotexts.append(image.info["parameters"])
    return gallery


def candidate_infotext(p: Any, outcome: BatchOutcome, index: int) -> str:
    """The job's infotext for candidate ``index`` of a video: its I4VGen record names that candidate as the manual
    anchor, so pasting it back (PNG Info -> txt2img, or the API's ``infotext``) makes the same video from it."""
    record = parse_infotext_value(outcome.infotext) or {}
    record.update(anchor_index=index, chosen_anchor=index, candidate=index)
    if outcome.scores:
        record["candidate_score"] = outcome.scores[index]
    saved = p.extra_generation_params.get(INFOTEXT_KEY)
    p.extra_generation_params[INFOTEXT_KEY] = json.dumps(record, separators=(",", ":"))
    try:
        return shim.processing().create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds,
                                                 iteration=outcome.iteration, position_in_batch=0)
    finally:
        p.extra_generation_params[INFOTEXT_KEY] = saved

"""Follows ComfyUI-AnimateDiff-Evolved 1.5.6: ``animatediff/model_injection.py:ModelPatcherHelper`` (motion models
in ``additional_models["ADE"]`` with inject/eject ``PatcherInjection``s, ``ADE_sample_settings`` and ``ADE_params``
attachments, OUTER_SAMPLE and CALC_COND_BATCH wrappers under the key "ADE"), ``nodes_gen1.py:AnimateDiffLoaderGen1``
(a clone of the MODEL with ADE's ``model_sampling`` object patch, ``BetaSchedules`` "sqrt_linear (AnimateDiff)"),
``sampling.py:outer_sample_wrapper`` (ADGS in ``transformer_options``, noise replaced unless ``noise.max()`` is ~0,
``iteration_opts.iterations`` runs of the sampler, cleanup in ``finally``) and ``sliding_calc_cond_batch`` (reads
ADGS first; with context options, windows of ``context_length`` frames overlapping by ``context_overlap``, results
averaged)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import comfy.patcher_extension
import torch
from comfy.model_patcher import ModelPatcher
from comfy.model_sampling import ModelSamplingDiscreteEPS
from comfy.patcher_extension import PatcherInjection, WrappersMP
from comfy_tinymodel import MotionModule

ADE = "ADE"


@dataclass
class IterationOptions:
    iterations: int = 1


@dataclass
class SampleSettings:
    iteration_opts: IterationOptions = field(default_factory=IterationOptions)
    custom_cfg: object = None
    seed_override: Optional[int] = None


@dataclass
class ContextOptions:
    context_length: Optional[int] = None
    context_overlap: int = 0


@dataclass
class InjectionParams:
    context_options: ContextOptions = field(default_factory=ContextOptions)


class AnimateDiffGlobalState:
    def __init__(self):
        self.current_step = 0
        self.sessions = 0


@dataclass
class BetaScheduleConfig:
    sampling_settings: dict


sessions = []  # every ADGS made: tests read how many sessions ran and how far their steps went


def inject_motion_models(patcher: ModelPatcher):
    for mm in patcher.additional_models.get(ADE, []):
        patcher.model.diffusion_model.motion = mm.model


def eject_motion_models(patcher: ModelPatcher):
    patcher.model.diffusion_model.motion = None


def outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    orig_model_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
    adgs = AnimateDiffGlobalState()
    adgs.params = guider.model_patcher.get_attachment("ADE_params") or InjectionParams()
    sessions.append(adgs)
    guider.model_options["transformer_options"]["ADGS"] = adgs
    try:
        args = list(args)
        noise, seed = args[0], args[-1]
        if not math.isclose(float(noise.max()), 0.0):
            generator = torch.Generator().manual_seed(int(seed or 0) + 12345)
            args[0] = torch.randn(noise.shape, generator=generator)
        original_callback = args[-3]

        def ad_callback(step, x0, x, total_steps):
            if original_callback is not None:
                original_callback(step, x0, x, total_steps)
            adgs.current_step = step + 1

        args[-3] = ad_callback
        settings = guider.model_patcher.get_attachment("ADE_sample_settings") or SampleSettings()
        latents = None
        for _ in range(settings.iteration_opts.iterations):
            latents = executor(*tuple(args), **kwargs)
        return latents
    finally:
        guider.model_options = orig_model_options


def sliding_calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    adgs = model_options["transformer_options"]["ADGS"]  # KeyError outside a session, as in ADE
    params = adgs.params  # ADGS.update_with_inject_params: the params the outer wrapper cloned from the MODEL
    length = params.context_options.context_length
    if length is None or x_in.shape[0] <= length:
        return executor(model, conds, x_in, timestep, model_options)
    stride = max(1, length - params.context_options.context_overlap)
    starts = list(range(0, x_in.shape[0] - length + 1, stride))
    if starts[-1] != x_in.shape[0] - length:
        starts.append(x_in.shape[0] - length)
    total = [torch.zeros_like(x_in) if c is not None else None for c in conds]
    counts = torch.zeros((x_in.shape[0], 1, 1, 1))
    adgs.windows = getattr(adgs, "windows", 0) + len(starts)
    for start in starts:
        window = slice(start, start + length)
        out = executor(model, conds, x_in[window], timestep[window], model_options)
        for i, o in enumerate(out):
            if o is not None:
                total[i][window] += o
        counts[window] += 1
    return [t / counts if t is not None else None for t in total]


def load_animatediff(model: ModelPatcher, *, context_length: Optional[int] = None, context_overlap: int = 0,
                     iterations: int = 1, custom_cfg: object = None) -> ModelPatcher:
    """What ADE's loader node returns: a clone of ``model`` carrying the motion model and ADE's settings."""
    video = model.clone()
    config = BetaScheduleConfig({"beta_schedule": "sqrt_linear", "linear_start": 0.00085, "linear_end": 0.012})
    video.add_object_patch("model_sampling", ModelSamplingDiscreteEPS(config))
    video.set_additional_models(ADE, [ModelPatcher(MotionModule())])
    video.set_injections(ADE, [PatcherInjection(inject=inject_motion_models, eject=eject_motion_models)])
    video.set_attachments("ADE_sample_settings",
                          SampleSettings(iteration_opts=IterationOptions(iterations), custom_cfg=custom_cfg))
    video.set_attachments("ADE_params", InjectionParams(ContextOptions(context_length, context_overlap)))
    video.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, ADE, outer_sample_wrapper)
    video.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, ADE, sliding_calc_cond_batch)
    return video

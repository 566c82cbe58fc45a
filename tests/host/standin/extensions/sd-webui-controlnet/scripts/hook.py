"""Stand-in of sd-webui-controlnet 1.1.455 ``scripts/hook.py``:

* ``mark_prompt_context`` / ``unmark_prompt_context``: a mark row (+1024 cond, -1024 uncond) put in front of each
  cond's tokens, in place in A1111's conditioning lists; unmarking strips it, gives ``cond_mark`` (1 cond, 0 uncond;
  all ones when unmarked) and clears A1111's cond caches.
* ``ControlParams``: ``hint_cond`` is a property whose setter drops ``used_hint_cond``; ``disabled_by_hr_option``.
* ``UnetHook``: ``guidance_schedule_handler`` (a cfg-denoiser callback: ``guidance_stopped`` from
  ``sampling_step / total_sampling_steps`` against start/end), ``hook`` (``p.sample_before_CN_hack`` kept once,
  ``p.sample = process_sample`` marking the kwargs' conds and ``hr_c``/``hr_uc``; the UNet's ``forward`` replaced;
  the callback registered), the hooked forward (hi-res hint chosen by size; for each active ControlNet-type param
  ``control_model(x, hint, timesteps, context)``, scaled by the weight, the soft weights of a non-balanced control
  mode, and ``cond_mark`` for "ControlNet is more important"; added by row position, so one hint row broadcasts
  and any other count must equal the batch, as ``h += guided_hint`` in ``cldm.py``), ``restore``.

The UNet forward is the tiny model's, given the summed residual (the real one re-implements SD's UNet forward).
``CALLS`` records every hooked forward for the tests: rows, whether the prompts were marked, and per unit whether
it was stopped and the mean of each hint row it used."""
import torch
from modules import script_callbacks
from modules.processing import StableDiffusionProcessing
from modules.prompt_parser import ComposableScheduledPromptConditioning, MulticondLearnedConditioning, ScheduledPromptConditioning
from scripts.enums import HiResFixOption

POSITIVE_MARK_TOKEN = 1024
NEGATIVE_MARK_TOKEN = -POSITIVE_MARK_TOKEN
MARK_EPS = 1e-3
CALLS = []


def prompt_context_is_marked(x):
    t = x[..., 0, :]
    m = torch.abs(t) - POSITIVE_MARK_TOKEN
    return float(torch.mean(torch.abs(m))) < MARK_EPS


def mark_prompt_context(x, positive):
    if isinstance(x, list):
        for i in range(len(x)):
            x[i] = mark_prompt_context(x[i], positive)
        return x
    if isinstance(x, MulticondLearnedConditioning):
        x.batch = mark_prompt_context(x.batch, positive)
        return x
    if isinstance(x, ComposableScheduledPromptConditioning):
        x.schedules = mark_prompt_context(x.schedules, positive)
        return x
    if isinstance(x, ScheduledPromptConditioning):
        cond = x.cond
        if prompt_context_is_marked(cond):
            return x
        mark = POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN
        cond = torch.cat([torch.zeros_like(cond)[:1] + mark, cond], dim=0)
        return ScheduledPromptConditioning(end_at_step=x.end_at_step, cond=cond)
    return x


def unmark_prompt_context(x):
    if not prompt_context_is_marked(x):
        return torch.ones(size=(x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device), [], [], x
    mark = x[:, 0, :]
    context = x[:, 1:, :]
    mark = (torch.mean(torch.abs(mark - NEGATIVE_MARK_TOKEN), dim=1) > MARK_EPS).float()
    mark_batch = mark[:, None, None, None].to(x.dtype).to(x.device)
    mark = mark.tolist()
    uc_indices = [i for i, item in enumerate(mark) if item < 0.5]
    c_indices = [i for i, item in enumerate(mark) if not item < 0.5]
    StableDiffusionProcessing.cached_c = [None, None]
    StableDiffusionProcessing.cached_uc = [None, None]
    return mark_batch, uc_indices, c_indices, context


class ControlParams:
    def __init__(self, control_model, preprocessor, hint_cond, weight, guidance_stopped, start_guidance_percent,
                 stop_guidance_percent, advanced_weighting, control_model_type, hr_hint_cond, global_average_pooling,
                 soft_injection, cfg_injection, hr_option=HiResFixOption.BOTH, **kwargs):
        self.control_model = control_model
        self.preprocessor = preprocessor
        self._hint_cond = hint_cond
        self.weight = weight
        self.guidance_stopped = guidance_stopped
        self.start_guidance_percent = start_guidance_percent
        self.stop_guidance_percent = stop_guidance_percent
        self.advanced_weighting = advanced_weighting
        self.control_model_type = control_model_type
        self.global_average_pooling = global_average_pooling
        self.hr_hint_cond = hr_hint_cond
        self.hr_option = hr_option
        self.used_hint_cond = None
        self.soft_injection = soft_injection
        self.cfg_injection = cfg_injection

    @property
    def hint_cond(self):
        return self._hint_cond

    @hint_cond.setter
    def hint_cond(self, new_hint_cond):
        self._hint_cond = new_hint_cond
        self.used_hint_cond = None

    def disabled_by_hr_option(self, is_in_high_res_fix):
        if self.hr_option == HiResFixOption.BOTH:
            return False
        if self.hr_option == HiResFixOption.LOW_RES_ONLY:
            return is_in_high_res_fix
        return not is_in_high_res_fix


class UnetHook(torch.nn.Module):
    def __init__(self, lowvram=False):
        super().__init__()
        self.lowvram = lowvram
        self.model = None
        self.sd_ldm = None
        self.control_params = None
        self.is_in_high_res_fix = False

    def guidance_schedule_handler(self, x):
        if not self.control_params:
            return
        for param in self.control_params:
            current_sampling_percent = x.sampling_step / x.total_sampling_steps
            param.guidance_stopped = current_sampling_percent < param.start_guidance_percent or \
                current_sampling_percent > param.stop_guidance_percent

    def hook(self, model, sd_ldm, control_params, process, batch_option_uint_separate=False,
             batch_option_style_align=False):
        self.model = model
        self.sd_ldm = sd_ldm
        self.control_params = control_params
        outer = self

        def process_sample(*args, **kwargs):
            mark_prompt_context(kwargs.get('conditioning', []), positive=True)
            mark_prompt_context(kwargs.get('unconditional_conditioning', []), positive=False)
            mark_prompt_context(getattr(process, 'hr_c', []), positive=True)
            mark_prompt_context(getattr(process, 'hr_uc', []), positive=False)
            return process.sample_before_CN_hack(*args, **kwargs)

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            cond_mark, uc_indices, c_indices, context = unmark_prompt_context(context)
            batch_size = int(x.shape[0])
            is_in_high_res_fix = False
            for param in outer.control_params:
                if param.used_hint_cond is None:
                    param.used_hint_cond = param.hint_cond
                if isinstance(param.hr_hint_cond, torch.Tensor) and x.ndim == 4 and param.hint_cond.ndim == 4:
                    h_lr, h_hr, h = param.hint_cond.shape[2], param.hr_hint_cond.shape[2], x.shape[2] * 8
                    is_in_high_res_fix = abs(h - h_lr) >= abs(h - h_hr)
                    wanted = param.hr_hint_cond if is_in_high_res_fix else param.hint_cond
                    if param.used_hint_cond is not wanted:
                        param.used_hint_cond = wanted
            outer.is_in_high_res_fix = is_in_high_res_fix
            record = {"batch": batch_size, "marked": bool(uc_indices or c_indices), "units": []}
            total = None
            for param in outer.control_params:
                stopped = param.guidance_stopped or param.disabled_by_hr_option(is_in_high_res_fix)
                hint = param.used_hint_cond
                record["units"].append((stopped, [round(float(r.mean()), 4) for r in hint]))
                if stopped or not param.control_model_type.is_controlnet:
                    continue
                control = param.control_model(x=x, hint=hint, timesteps=timesteps, context=context)
                if control.shape[0] not in (1, batch_size):
                    raise RuntimeError(f"The size of tensor a ({batch_size}) must match the size of tensor b "
                                       f"({control.shape[0]}) at non-singleton dimension 0")
                scale = param.weight * (0.825 ** 6 if param.soft_injection else 1.0)
                if param.cfg_injection:
                    control = control * cond_mark
                control = control * scale
                total = control if total is None else total + control
            CALLS.append(record)
            return outer.original_forward(x, timesteps, context, control=total)

        def forward_webui(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            finally:
                if outer.lowvram:
                    for param in outer.control_params or []:
                        param.control_model.to("cpu")

        if getattr(process, 'sample_before_CN_hack', None) is None:
            process.sample_before_CN_hack = process.sample
        process.sample = process_sample
        model._original_forward = model.forward
        outer.original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def restore(self):
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


"""Stand-in of sd-webui-animatediff ``scripts/animatediff_infv2v.py``: ``uniform`` yields context windows (one
window ``range(batch_size)`` when ``video_length <= batch_size``; otherwise overlapping windows, wrapping around,
shifted by the step), and ``animatediff_on_cfg_denoiser`` returns unless AD is enabled and injected, and at
``denoiser.step == 0`` of a sampler takes prompt travel's per-frame conds (``multi_cond``), which every
call then uses as its text cond, and replaces the sampler's ``inner_model.forward`` with a loop over the windows, taking the
uncond rows as ``context + video_length`` under ``batch_cond_uncond`` and writing ``x_out[context] = out``; around
each window ControlNet's per-frame controls are cut to the window's rows and moved to its device
(``mm_cn_select``), then written back into the kept full control (``mm_cn_restore``)."""
from types import MethodType

import torch
from modules import devices, shared
from scripts.animatediff_mm import mm_animatediff as motion_module


class AnimateDiffInfV2V:
    windows_seen = []

    @staticmethod
    def uniform(step, video_length=0, batch_size=16, stride=1, overlap=4, loop_setting='R-P'):
        if video_length <= batch_size:
            yield list(range(batch_size))
            return
        shift = step % video_length
        stride_len = max(1, batch_size - overlap)
        for j in range(shift, video_length + shift - overlap, stride_len):
            yield [e % video_length for e in range(j, j + batch_size)]

    @staticmethod
    def animatediff_on_cfg_denoiser(cfg_params):
        ad_params = motion_module.ad_params
        if ad_params is None or not ad_params.enable:
            return
        if not motion_module.mm_injected:
            return
        if cfg_params.denoiser.step == 0 and getattr(cfg_params.denoiser.inner_model, 'original_forward', None) is None:
            prompt_closed_loop = (ad_params.video_length > ad_params.batch_size) and (ad_params.closed_loop in ['R+P', 'A'])
            ad_params.text_cond = ad_params.prompt_scheduler.multi_cond(cfg_params.text_cond, prompt_closed_loop)

            try:
                from scripts.external_code import find_cn_script
                cn_script = find_cn_script(cfg_params.denoiser.p.scripts)
            except Exception:
                cn_script = None

            def mm_cn_select(context):
                if cn_script and cn_script.latest_network:
                    for control in cn_script.latest_network.control_params:
                        if control.control_model_type.name not in ("IPAdapter", "Controlllite"):
                            if control.hint_cond.shape[0] > len(context):
                                control.hint_cond_backup = control.hint_cond
                                control.hint_cond = control.hint_cond[context]
                            control.hint_cond = control.hint_cond.to(device=devices.get_device_for("controlnet"))
                            if control.hr_hint_cond is not None:
                                if control.hr_hint_cond.shape[0] > len(context):
                                    control.hr_hint_cond_backup = control.hr_hint_cond
                                    control.hr_hint_cond = control.hr_hint_cond[context]
                                control.hr_hint_cond = control.hr_hint_cond.to(device=devices.get_device_for("controlnet"))

            def mm_cn_restore(context):
                if cn_script and cn_script.latest_network:
                    for control in cn_script.latest_network.control_params:
                        if control.control_model_type.name not in ("IPAdapter", "Controlllite"):
                            if getattr(control, "hint_cond_backup", None) is not None:
                                control.hint_cond_backup[context] = control.hint_cond.to(device="cpu")
                                control.hint_cond = control.hint_cond_backup
                            if control.hr_hint_cond is not None and getattr(control, "hr_hint_cond_backup", None) is not None:
                                control.hr_hint_cond_backup[context] = control.hr_hint_cond.to(device="cpu")
                                control.hr_hint_cond = control.hr_hint_cond_backup

            def mm_sd_forward(self, x_in, sigma_in, cond):
                x_out = torch.zeros_like(x_in)
                for context in AnimateDiffInfV2V.uniform(ad_params.step, ad_params.video_length, ad_params.batch_size,
                                                         ad_params.stride, ad_params.overlap, ad_params.closed_loop):
                    AnimateDiffInfV2V.windows_seen.append(list(context))
                    _context = context + [c + ad_params.video_length for c in context] if shared.opts.batch_cond_uncond else context
                    mm_cn_select(_context)
                    out = self.original_forward(x_in[_context], sigma_in[_context],
                                                cond={k: ([v[0][_context]] if isinstance(v, list) else v[_context]) for k, v in cond.items()})
                    x_out = x_out.to(dtype=out.dtype)
                    x_out[_context] = out
                    mm_cn_restore(_context)
                return x_out

            cfg_params.denoiser.inner_model.original_forward = cfg_params.denoiser.inner_model.forward
            cfg_params.denoiser.inner_model.forward = MethodType(mm_sd_forward, cfg_params.denoiser.inner_model)
        cfg_params.text_cond = ad_params.text_cond
        ad_params.step = cfg_params.denoiser.step

"""Follows ``modules/sd_samplers_cfg_denoiser.py`` ``CFGDenoiser.forward(x, sigma, uncond, cond, cond_scale,
s_min_uncond, image_cond)``: interrupt check, ``reconstruct_*_batch`` at ``self.step``, ``x_in`` = [cond copies;
x], ``cfg_denoiser_callback`` (where AnimateDiff hooks in), one ``inner_model`` call with
``make_condition_dict`` (``{"c_crossattn": [...], "c_concat": [...]}``, or SDXL's dict with ``c_concat``) over
``catenate_conds`` / ``subscript_cond`` under ``batch_cond_uncond``, ``combine_denoised``, ``step += 1``."""
import torch
from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.shared import opts, state


def catenate_conds(conds):
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([x[key] for x in conds]) for key in conds[0].keys()}


def subscript_cond(cond, a, b):
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


def make_condition_dict(c_crossattn, c_concat):
    if isinstance(c_crossattn, dict):
        res = c_crossattn.copy()
        res['c_concat'] = [c_concat]
        return res
    return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [image_cond])
        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond
        cond_in = catenate_conds([tensor, uncond])
        make = make_condition_dict
        if opts.batch_cond_uncond:
            x_out = self.inner_model(x_in, sigma_in, cond=make(cond_in, image_cond_in))
        else:
            x_out = torch.zeros_like(x_in)
            for a in range(0, x_out.shape[0], batch_size):
                b = a + batch_size
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make(subscript_cond(cond_in, a, b), image_cond_in[a:b]))
        denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)
        indexes = [c[0][0] for c in conds_list]
        self.sampler.last_latent = self.get_pred_x0(torch.cat([x_in[i:i + 1] for i in indexes]),
                                                    torch.cat([x_out[i:i + 1] for i in indexes]), sigma)
        sd_samplers_common.store_latent(self.sampler.last_latent)
        self.step += 1
        return denoised

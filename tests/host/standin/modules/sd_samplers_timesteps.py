"""Follows ``modules/sd_samplers_timesteps.py`` (``CompVisTimestepsDenoiser`` returning eps,
``CFGDenoiserTimesteps``, ``CompVisSampler.get_timesteps`` = ``range(0, 1000, 1000 // steps) + 1``,
``sample``/``sample_img2img``) and ``sd_samplers_timesteps_impl.ddim`` (``len(timesteps) - 1`` evaluations, the
model's ``alphas_cumprod`` read at call time)."""
import torch
from modules import devices, sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones((x.shape[0]))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1. - a_prev) ** 0.5 * e_t
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': 0, 'sigma_hat': 0, 'denoised': pred_x0})
    return x


samplers_timesteps = [('DDIM', ddim, ['ddim'], {})]
samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = 'eta_ddim'
        self.eta_infotext_field = 'Eta DDIM'
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=devices.device) + 1, 0, 999)

    def _run(self, p, x, timesteps, conditioning, unconditional_conditioning, image_conditioning, steps):
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs['timesteps'] = timesteps
        self.sampler_extra_args = {'cond': conditioning, 'image_cond': image_conditioning,
                                   'uncond': unconditional_conditioning, 'cond_scale': p.cfg_scale,
                                   's_min_uncond': self.s_min_uncond}
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                             disable=False, callback=self.callback_state, **extra_params_kwargs))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        alphas_cumprod = shared.sd_model.alphas_cumprod
        a = alphas_cumprod[timesteps[t_enc]]
        xi = x * a.sqrt() + noise * (1 - a).sqrt()
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        return self._run(p, xi, timesteps[:t_enc], conditioning, unconditional_conditioning, image_conditioning, t_enc + 1)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        self.last_latent = x
        return self._run(p, x, self.get_timesteps(p, steps), conditioning, unconditional_conditioning, image_conditioning, steps)

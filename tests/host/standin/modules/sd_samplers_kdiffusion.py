"""Follows ``modules/sd_samplers_kdiffusion.py``: ``CFGDenoiserKDiffusion.inner_model`` (``CompVisDenoiser`` of
``shared.sd_model``, built lazily, so its sigmas freeze the schedule live at construction), ``KDiffusionSampler``
with ``get_sigmas``, ``sample`` (x scaled by sigmas[0]) and ``sample_img2img`` (``sigmas[steps - t_enc - 1:]``,
``xi = x + noise * sigma_sched[0]``, ``t_enc + 1`` steps). Schedulers other than the model's own are not modelled."""
import inspect

import k_diffusion.external
import k_diffusion.sampling
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared

samplers_k_diffusion = [
    ('Euler a', 'sample_euler_ancestral', ['k_euler_a'], {"uses_ensd": True}),
    ('Euler', 'sample_euler', ['k_euler'], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = k_diffusion.external.CompVisDenoiser(shared.sd_model)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps).cpu()

    def _run(self, p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning, steps):
        extra_params_kwargs = self.initialize(p)
        if 'sigmas' in inspect.signature(self.func).parameters:
            extra_params_kwargs['sigmas'] = sigmas
        self.sampler_extra_args = {'cond': conditioning, 'image_cond': image_conditioning,
                                   'uncond': unconditional_conditioning, 'cond_scale': p.cfg_scale,
                                   's_min_uncond': self.s_min_uncond}
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                             disable=False, callback=self.callback_state, **extra_params_kwargs))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        return self._run(p, xi, sigma_sched, conditioning, unconditional_conditioning, image_conditioning, t_enc + 1)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        self.last_latent = x
        return self._run(p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning, steps)

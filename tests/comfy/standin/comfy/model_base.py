"""Follows ``comfy/model_base.py``: ``ModelType``, ``BaseModel`` (``model_config``, ``model_type``, ``latent_format``,
``model_sampling`` = the EPS discrete sampling of the config's ``sampling_settings``, ``diffusion_model``;
``apply_model(x, t, c_crossattn, transformer_options)`` takes sigma as ``t``: input scaled by ``calculate_input``,
timestep by ``model_sampling.timestep``, result by ``calculate_denoised``; ``process_latent_in/out``)."""
from enum import Enum

import torch
from comfy import model_sampling as sampling


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, diffusion_model, model_type=ModelType.EPS):
        super().__init__()
        self.model_config = model_config
        self.latent_format = model_config.latent_format()
        self.model_type = model_type
        self.model_sampling = sampling.ModelSamplingDiscreteEPS(model_config)
        self.diffusion_model = diffusion_model
        self.current_patcher = None

    def get_dtype(self):
        return torch.float32

    def apply_model(self, x, t, c_crossattn=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(t).float()
        out = self.diffusion_model(xc, timestep, context=c_crossattn, transformer_options=transformer_options)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

"""Follows k-diffusion ``external.DiscreteSchedule`` / ``DiscreteEpsDDPMDenoiser`` / ``CompVisDenoiser``: sigmas
from ``alphas_cumprod`` at construction, ``sigma_to_t`` by log-sigma interpolation, ``forward`` returns x0."""
import torch


class CompVisDenoiser(torch.nn.Module):
    def __init__(self, model, quantize=False):
        super().__init__()
        self.inner_model = model
        alphas_cumprod = model.alphas_cumprod.float()
        self.register_buffer("sigmas", ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
        self.register_buffer("log_sigmas", self.sigmas.log())
        self.quantize = quantize

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma, quantize=None):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t):
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def forward(self, input, sigma, **kwargs):
        c_out = -sigma[:, None, None, None]
        c_in = 1 / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        eps = self.inner_model.apply_model(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input + eps * c_out

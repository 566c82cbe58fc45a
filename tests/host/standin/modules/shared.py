"""Follows ``modules/shared.py``: module-level ``opts``, ``state``, ``cmd_opts``, ``device``, ``sd_model``,
``total_tqdm``, ``OptionInfo``, ``listfiles``, ``models_path``, ``loaded_hypernetworks``, ``latent_upscale_modes``."""
import os
import types

from modules import options, shared_state

OptionInfo = options.OptionInfo

DEFAULT_OPTS = {
    "batch_cond_uncond": True, "pad_cond_uncond": True, "pad_cond_uncond_v0": False, "eta_noise_seed_delta": 0,
    "randn_source": "CPU", "img2img_fix_steps": False, "img2img_extra_noise": 0.0, "s_min_uncond": 0.0,
    "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "eta_ancestral": 1.0, "eta_ddim": 0.0,
    "skip_early_cond": 0.0, "s_min_uncond_all": False, "always_discard_next_to_last_sigma": False,
    "sd_vae_decode_method": "Full", "persistent_cond_cache": True, "enable_pnginfo": True, "samples_save": False,
    "use_downcasted_alpha_bar": False, "sd_noise_schedule": "Default", "multiple_tqdm": True, "infotext_skip_pasting": [],
    "upcast_attn": False,
}

opts = options.Options(DEFAULT_OPTS)
state = shared_state.State()
cmd_opts = types.SimpleNamespace(no_half=True, lowvram=False, medvram=False, disable_console_progressbars=False)
device = "cpu"
sd_model = None
models_path = "/tmp/i4vgen-standin-models"
loaded_hypernetworks = []
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {"Latent": {"mode": "bilinear", "antialias": False},
                        "Latent (nearest)": {"mode": "nearest", "antialias": False}}


def listfiles(dirname):
    filenames = [os.path.join(dirname, x) for x in sorted(os.listdir(dirname), key=str.lower) if not x.startswith(".")]
    return [file for file in filenames if os.path.isfile(file)]


class TotalTQDM:
    """Follows ``modules/shared_total_tqdm.py`` ``TotalTQDM`` (counts instead of drawing)."""

    def __init__(self):
        self.total = None
        self.count = 0

    def update(self):
        self.count += 1

    def updateTotal(self, new_total):
        self.total = new_total

    def clear(self):
        self.count = 0


total_tqdm = TotalTQDM()

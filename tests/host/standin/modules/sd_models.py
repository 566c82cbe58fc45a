"""Follows ``modules/sd_models.py`` ``apply_alpha_schedule_override`` (called before every ``p.sample``) and
``reload_model_weights`` and ``SkipWritingToConfig``."""
import contextlib

from modules import shared


def apply_alpha_schedule_override(sd_model, p=None):
    if not hasattr(sd_model, 'alphas_cumprod') or not hasattr(sd_model, 'alphas_cumprod_original'):
        return
    sd_model.alphas_cumprod = sd_model.alphas_cumprod_original.to(shared.device)
    if shared.opts.use_downcasted_alpha_bar:
        sd_model.alphas_cumprod = sd_model.alphas_cumprod.half().to(shared.device)


def reload_model_weights(sd_model=None, info=None):
    pass


@contextlib.contextmanager
def SkipWritingToConfig():
    yield

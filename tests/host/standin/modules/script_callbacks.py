"""Follows ``modules/script_callbacks.py``: ``on_ui_settings``, ``on_cfg_denoiser`` + ``CFGDenoiserParams``,
``on_infotext_pasted``, ``on_after_component``, ``remove_callbacks_for_function``; callbacks run in registration order, exceptions reported."""
from modules import errors

callbacks = {"ui_settings": [], "cfg_denoiser": [], "infotext_pasted": [], "after_component": [], "before_component": []}


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def _run(category, *args):
    for callback in callbacks[category]:
        try:
            callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category}", exc_info=True)


def on_ui_settings(callback, *, name=None):
    callbacks["ui_settings"].append(callback)


def on_cfg_denoiser(callback, *, name=None):
    callbacks["cfg_denoiser"].append(callback)


def on_infotext_pasted(callback, *, name=None):
    callbacks["infotext_pasted"].append(callback)


def on_after_component(callback, *, name=None):
    callbacks["after_component"].append(callback)


def remove_callbacks_for_function(callback_func):
    for value in callbacks.values():
        for callback in [c for c in value if c == callback_func]:
            value.remove(callback)


def ui_settings_callback():
    _run("ui_settings")


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def clear_callbacks():
    for value in callbacks.values():
        value.clear()

"""Refusals before any sampling: each names the node input (or ADE setting) and says what is allowed.

ADE's state lives on its MODEL (a ``ModelPatcher``) under the keys ``ModelPatcherHelper`` uses
(``animatediff/model_injection.py``): motion models in ``additional_models["ADE"]``, sample settings in the
attachment ``"ADE_sample_settings"``, injection params (context options) in ``"ADE_params"``."""
from __future__ import annotations

from typing import Any, Tuple

import torch

from ..core.settings import FIELD_BY_NAME
from ..errors import SettingsError

ADE_KEY = "ADE"
ADE_SAMPLE_SETTINGS = "ADE_sample_settings"
ADE_PARAMS = "ADE_params"
SD15_UNET = {"context_dim": 768, "model_channels": 320}
LATENT_ALLOWED = ("a LATENT of batch = frames (an integer in [1, 128]) with 4 channels, at least 8x8 (64x64 pixels), "
                  "e.g. Empty Latent Image with batch_size = frames")


def motion_models(model: Any) -> list:
    return list(getattr(model, "additional_models", {}).get(ADE_KEY, []) or [])


def attachment(model: Any, key: str) -> Any:
    get = getattr(model, "get_attachment", None)
    return get(key) if callable(get) else None


def video_size(latent: Any) -> Tuple[int, int, int]:
    """(frames, latent height, latent width) of the LATENT input, or the ``latent`` SettingsError."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
        raise SettingsError("latent", type(samples).__name__, LATENT_ALLOWED)
    frames, channels, height, width = samples.shape
    spec = FIELD_BY_NAME["frames"]
    if not (spec.minimum <= frames <= spec.maximum) or channels != 4 or height < 8 or width < 8:
        raise SettingsError("latent", f"batch {frames}, {channels} channels, {height}x{width}", LATENT_ALLOWED)
    if latent.get("noise_mask") is not None:
        raise SettingsError("latent", "with a noise mask", "a LATENT without a noise mask (I4VGen makes the whole video)")
    return int(frames), int(height), int(width)


def check_sd15(name: str, model: Any) -> None:
    """An SD1.5-shaped eps-prediction MODEL (AnimateDiff's motion modules and the method's schedule are SD1.5's)."""
    base = getattr(model, "model", None)
    config = getattr(getattr(base, "model_config", None), "unet_config", {}) or {}
    model_type = getattr(getattr(base, "model_type", None), "name", None)
    scale = getattr(getattr(base, "latent_format", None), "scale_factor", None)
    found = f"{type(getattr(base, 'model_config', None)).__name__} (context_dim {config.get('context_dim')}, " \
            f"{model_type} prediction)"
    if any(config.get(k) != v for k, v in SD15_UNET.items()) or model_type != "EPS" or scale != 0.18215:
        raise SettingsError(name, found, "an SD1.5 checkpoint's MODEL (eps prediction, context_dim 768)")


def check_models(image_model: Any, video_model: Any) -> None:
    check_sd15("image_model", image_model)
    check_sd15("video_model", video_model)
    if not motion_models(video_model):
        raise SettingsError("video_model", "no motion model",
                            "the MODEL out of an AnimateDiff-Evolved loader (e.g. AnimateDiff Loader), which carries "
                            "the motion model")
    if motion_models(image_model):
        raise SettingsError("image_model", "a MODEL with an AnimateDiff motion model",
                            "the plain checkpoint's MODEL, from before AnimateDiff-Evolved's loader")
    settings = attachment(video_model, ADE_SAMPLE_SETTINGS)
    if settings is None:
        return
    iterations = getattr(getattr(settings, "iteration_opts", None), "iterations", 1)
    if iterations > 1:
        raise SettingsError("FreeInit iterations", iterations,
                            "1 (ADE's iteration options re-run each sampling session, which would repeat an I4VGen "
                            "stage): drop the FreeInit / iteration options from the sample settings")
    if getattr(settings, "custom_cfg", None) is not None:
        raise SettingsError("custom_cfg", "set", "no ADE custom CFG (it would override the node's cfg in video "
                            "stages only)")
    injection = getattr(settings, "image_injection", None)
    if injection is not None and callable(getattr(injection, "is_empty", None)) and not injection.is_empty():
        raise SettingsError("image_inject", "set", "no ADE image injection (it splits a sampling session in parts)")


def context_length(video_model: Any) -> Any:
    """ADE's context-window length on the video MODEL (None without context options)."""
    params = attachment(video_model, ADE_PARAMS)
    return getattr(getattr(params, "context_options", None), "context_length", None)

"""Finding sd-webui-animatediff's state for this job, and switching its motion module off and on.

Details (the AnimateDiff code this is read against): docs/webui-host.md §AnimateDiff.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

from . import shim

AD_TITLE = "animatediff"
AD_MM_MODULE = "scripts.animatediff_mm"


@dataclass
class AnimateDiffJob:
    params: Any  # the job's AnimateDiffProcess, after AD's before_process resolved it
    motion: Any  # AD's module-level AnimateDiffMM singleton ``mm_animatediff``

    @property
    def injected(self) -> bool:
        return bool(type(self.motion).mm_injected)

    @property
    def model_name(self) -> str:
        return self.params.model

    @property
    def context_size(self) -> int:
        return int(self.params.batch_size)

    @property
    def video_length(self) -> int:
        return int(self.params.video_length)


def _animatediff_arg(p: Any) -> Tuple[bool, Any]:
    """(AD is loaded for this tab, its argument for this job)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or ():
        try:
            title = script.title().lower()
        except Exception:
            continue
        if title == AD_TITLE:
            args = p.script_args
            return True, args[script.args_from] if script.args_from is not None and script.args_from < len(args) else None
    return False, None


def find_animatediff(p: Any) -> Optional[AnimateDiffJob]:
    """AD's state when AD is installed and enabled for this job (call after every ``before_process``), else None."""
    present, arg = _animatediff_arg(p)
    mm_module = shim.loaded_extension_module(AD_MM_MODULE)
    if not present or mm_module is None:
        return None
    motion = getattr(mm_module, "mm_animatediff", None)
    if isinstance(arg, dict):  # AD converts API dicts in its before_process; if it did not run, use its global
        if arg.get("enable") is not True:
            return None
        arg = getattr(motion, "ad_params", None)
    if arg is None or isinstance(arg, type) or getattr(arg, "enable", False) is not True or motion is None:
        return None
    return AnimateDiffJob(params=arg, motion=motion)


@contextlib.contextmanager
def motion_module_ejected(sd_model: Any, ad: AnimateDiffJob) -> Iterator[None]:
    """The plain image UNet for the ``with`` body, on the same noise schedule as the video.

    ``AnimateDiffMM.restore`` pops the motion layers and puts SD's own ``alphas_cumprod`` back. I4VGen generates
    its anchors on the video's schedule (the official code uses AnimateDiff's linear-beta DDIM schedule for both,
    and both presets keep it), so the schedule that was live while injected is put back for the body. On exit
    SD's schedule is handed back first (``inject`` saves whatever it finds as the one to restore later), then
    the module is injected again and the exact schedule tensors from before are reinstated, whatever happened
    inside (error, interrupt, skip)."""
    if not ad.injected:
        raise RuntimeError("AnimateDiff is enabled but its motion module is not injected; see the console for "
                           "AnimateDiff's own error")
    video_schedule = (sd_model.alphas_cumprod, sd_model.alphas_cumprod_original)
    ad_logger = logging.getLogger("AnimateDiff")  # scripts/animatediff_logger.py
    ad_logger.addFilter(_without_adetailer_warning)
    ad.motion.restore(sd_model)
    image_schedule = (sd_model.alphas_cumprod, sd_model.alphas_cumprod_original)
    try:
        sd_model.alphas_cumprod, sd_model.alphas_cumprod_original = video_schedule
        yield
    finally:
        sd_model.alphas_cumprod, sd_model.alphas_cumprod_original = image_schedule
        ad.motion.inject(sd_model, ad.model_name)
        sd_model.alphas_cumprod, sd_model.alphas_cumprod_original = video_schedule
        ad_logger.removeFilter(_without_adetailer_warning)


def _without_adetailer_warning(record: logging.LogRecord) -> bool:
    """AD's CFG-denoiser hook (``animatediff_infv2v.py``) warns about !Adetailer whenever it finds the module out
    while AD is enabled; that is exactly what the anchor images need, so the warning is dropped for the span."""
    return not record.getMessage().startswith("No motion module detected")


class MotionSwitch:
    """The motion module out for image-mode calls and back in for video-mode calls, switched only when the mode
    changes (EVS alternates: image steps, the video block, image steps). Each ejection is one
    ``motion_module_ejected`` span, so ``close()`` (or the next video call) restores exactly what that context
    manager restores; call ``close()`` in ``finally``."""

    def __init__(self, sd_model: Any, ad: AnimateDiffJob):
        self.sd_model, self.ad = sd_model, ad
        self._span: Optional[contextlib.ExitStack] = None

    @property
    def ejected(self) -> bool:
        return self._span is not None

    def image(self) -> None:
        if self._span is None:
            span = contextlib.ExitStack()
            span.enter_context(motion_module_ejected(self.sd_model, self.ad))
            self._span = span

    def video(self) -> None:
        self.close()

    def close(self) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.close()

"""ControlNet's control during one I4VGen batch: which control rows an image-mode call sees, and where on the job's
step grid each UNet call sits for ControlNet's guidance start/end.

ControlNet pairs control row i with latent row i (one row broadcasts); a control video holds F rows, or 2F
(``[cond frames | uncond frames]``) when cond and uncond are batched. AnimateDiff picks each context window's rows
while the motion module is in, so video calls need nothing; image-mode calls (the candidates, EVS's image steps)
get frame 0's row or their chunk's frames' rows, swapped in only around those calls.

Details (read against sd-webui-controlnet 1.1.455): docs/webui-host.md §ControlNet.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional

import torch

from ..errors import Refusal
from . import shim
from .controlnet import control_params

# ``scripts/enums.py`` ``ControlModelType`` members whose control is a plain hint added by position.
PLAIN_HINT_TYPES = ("ControlNet", "ControlLoRA", "ControlNetUnion")
# Preprocessors whose hint is not only read by position (``hook.py``: latents from the first call's batch size,
# pasted results, noise hacks).
NOT_PLAIN_PREPROCESSORS = ("inpaint", "reference", "colorfix", "+lama", "revision", "ip-adapter", "instant_id")


def type_name(param: Any) -> str:
    kind = getattr(param, "control_model_type", None)
    return str(getattr(kind, "name", kind))


class JobControl:
    """The ``ControlParams`` of a job with ControlNet hooked, for a video of ``frames`` frames."""

    def __init__(self, params: List[Any], frames: int):
        self.params, self.frames = params, frames

    @classmethod
    def for_job(cls, p: Any, frames: int) -> Optional["JobControl"]:
        params = control_params(p)
        return cls(params, frames) if params else None

    def check(self) -> None:
        """Refuse, before any UNet call, a loaded unit whose control is not a plain hint I4VGen can place."""
        for index, param in enumerate(self.params):
            kind = type_name(param)
            name = str((getattr(param, "preprocessor", None) or {}).get("name", "none"))
            inner = getattr(getattr(param, "control_model", None), "control_model", None)
            if kind not in PLAIN_HINT_TYPES or type(inner).__name__ == "SparseCtrl":
                shown = "SparseCtrl" if type(inner).__name__ == "SparseCtrl" else kind
                raise Refusal(f"I4VGen with ControlNet unit {index}: a {shown} model is not supported (only "
                              "ControlNet and Control-LoRA models with an image hint). Turn the unit off or untick "
                              "I4VGen.")
            if any(part in name.lower() for part in NOT_PLAIN_PREPROCESSORS):
                raise Refusal(f"I4VGen with ControlNet unit {index}: the '{name}' preprocessor is not supported (not a "
                              "plain hint). Turn the unit off or untick I4VGen.")
            for field in ("hint_cond", "hr_hint_cond"):
                hint = getattr(param, field, None)
                if field == "hr_hint_cond" and hint is None:
                    continue
                if not isinstance(hint, torch.Tensor) or hint.ndim != 4 or hint.shape[1] != 3:
                    raise Refusal(f"I4VGen with ControlNet unit {index}: its control is not an RGB image hint "
                                  f"({'a list' if isinstance(hint, list) else getattr(hint, 'shape', type(hint))}).")
                if hint.shape[0] not in (1, self.frames, 2 * self.frames):
                    raise Refusal(f"I4VGen with ControlNet unit {index}: {hint.shape[0]} control images for a video of "
                                  f"{self.frames} frames; give one image or one per frame.")

    @contextlib.contextmanager
    def frame_rows(self, start: int, stop: int, *, batched_cond_uncond: Optional[bool] = None) -> Iterator[None]:
        """Each per-frame control holds frames ``start:stop`` only (cond rows then uncond rows when the CFG call
        batches them) for the body; one-row controls already broadcast. Put back whatever happens."""
        if batched_cond_uncond is None:
            batched_cond_uncond = bool(getattr(shim.opts(), "batch_cond_uncond", True))
        device = controlnet_device()
        saved = [(param, param.hint_cond, getattr(param, "hr_hint_cond", None)) for param in self.params]
        try:
            for param, hint, hr_hint in saved:
                if hint.shape[0] > 1:
                    param.hint_cond = self._rows(hint, start, stop, batched_cond_uncond).to(device)
                if isinstance(hr_hint, torch.Tensor) and hr_hint.shape[0] > 1:
                    param.hr_hint_cond = self._rows(hr_hint, start, stop, batched_cond_uncond).to(device)
            yield
        finally:
            for param, hint, hr_hint in saved:
                param.hint_cond = hint  # ControlNet's setter drops its cached ``used_hint_cond``
                param.hr_hint_cond = hr_hint

    def _rows(self, hint: torch.Tensor, start: int, stop: int, batched_cond_uncond: bool) -> torch.Tensor:
        per_frame = hint[:self.frames]  # the uncond half of a 2F control repeats the cond half
        rows = per_frame[start:stop]
        return torch.cat([rows, rows]) if batched_cond_uncond else rows

    def first_frame(self) -> contextlib.AbstractContextManager:
        """Frame 0's control for the candidate images (as they get frame 0's prompt under prompt travel)."""
        return self.frame_rows(0, 1, batched_cond_uncond=False)


def controlnet_device() -> Any:
    try:
        return shim.devices().get_device_for("controlnet")
    except (AttributeError, shim.HostUnavailable):
        return shim.devices().device


@contextlib.contextmanager
def at_grid_step(step: int, steps: int) -> Iterator[None]:
    """The sampling counters ControlNet's guidance start/end reads (``hook.py`` ``guidance_schedule_handler``:
    ``state.sampling_step / state.sampling_steps``, taken when the CFG denoiser runs) as a plain job has them at
    step ``step`` of ``steps``: A1111 sets ``sampling_step = 0`` when sampling starts and ``= i`` after step i
    (``Sampler.callback_state``), so step j runs with ``max(j - 1, 0)``. Put back after the call."""
    state = shim.state()
    saved = state.sampling_step, state.sampling_steps
    state.sampling_step, state.sampling_steps = max(int(step) - 1, 0), int(steps)
    try:
        yield
    finally:
        state.sampling_step, state.sampling_steps = saved


class GridClock:
    """Where on the job's S-step grid the next UNet call of a denoiser sits: a host sampler's run starts at
    ``offset`` and moves one step per step callback; a direct call sits at the grid step nearest its timestep."""

    def __init__(self, timesteps: List[int]):
        self.timesteps = list(timesteps)
        self.offset = 0
        self.step = 0

    def begin_run(self) -> None:
        self.step = self.offset

    def after_step(self, i: int) -> None:
        self.step = self.offset + int(i) + 1

    def at_timestep(self, t: int) -> None:
        self.step = min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - int(t)))

    def attach(self, sampler: Any) -> None:
        """Every call of the sampler's CFG denoiser runs with the sampling counters a plain job has at the same
        step of the grid, so ControlNet's guidance start/end covers the same share of the denoising."""
        cfg = sampler.model_wrap_cfg
        forward = cfg.forward

        def forward_on_grid(*args: Any, **kwargs: Any) -> Any:
            with at_grid_step(self.step, len(self.timesteps)):
                return forward(*args, **kwargs)

        cfg.forward = forward_on_grid

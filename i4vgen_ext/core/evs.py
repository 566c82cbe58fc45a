"""EVS refinement (Su et al., CVPR 2025): T2I + [T2V] + T2I on the same SD1.5 / AnimateDiff pair. A video latent is
SDEdit-noised and denoised frame by frame in image mode, with one "encapsulated" block of n_V video steps at one
T2I step; DDIM inversion and Selective Feature Injection are options. The defaults are ours, each a setting.

Details: docs/evs.md §Defaults.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from .denoiser import Denoiser, StepCallback, notify
from .schedule import add_noise
from .settings import (  # noqa: F401
    DEFAULTS,
    EVS_NAMES,
    FIELD_BY_NAME,
    SFI_LAYER_PRESETS,
    SFI_LAYERS_ALLOWED,
    SettingsError,
    check,
    parse_sfi_layers,
)

DEFAULT_VIDEO_STEPS = 4


def _evs_default(attr: str) -> Any:
    return field(default=DEFAULTS[f"evs_{attr}"])


@dataclass(frozen=True)
class EVSSettings:
    """The ``evs_*`` settings of ``settings.FIELDS`` (defaults, ranges and help live there) without the prefix."""

    strength: float = _evs_default("strength")
    t2v_step: int = _evs_default("t2v_step")  # -1: the middle T2I step
    video_strength: float = _evs_default("video_strength")
    video_steps: int = _evs_default("video_steps")  # -1: min(4, int(S * video_strength))
    fresh_bridge_noise: bool = _evs_default("fresh_bridge_noise")
    inversion: bool = _evs_default("inversion")
    sfi: bool = _evs_default("sfi")
    sfi_gamma: float = _evs_default("sfi_gamma")
    sfi_layers: str = _evs_default("sfi_layers")

    def __post_init__(self) -> None:
        for attr, value in asdict(self).items():
            spec = FIELD_BY_NAME[f"evs_{attr}"]
            kinds = (int, float) if spec.kind is float else (spec.kind,)
            if not isinstance(value, kinds) or (isinstance(value, bool) and spec.kind is not bool):
                raise SettingsError(spec.name, value, spec.allowed())
            check(spec, value)
        if self.sfi and not self.inversion:
            raise SettingsError("evs_sfi", self.sfi, "false unless evs_inversion is on (SFI injects the features that "
                                                     "the DDIM inversion records)")

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> "EVSSettings":
        """From ``evs_*`` names (missing ones take the defaults)."""
        return cls(**{name[len("evs_"):]: value for name, value in values.items() if name in EVS_NAMES})

    def to_fields(self) -> Dict[str, Any]:
        """The settings under their ``evs_*`` names (API, infotext)."""
        return {f"evs_{attr}": value for attr, value in asdict(self).items()}

    def plan(self, steps: int) -> Dict[str, int]:
        """Step counts for S sampling steps: T2I steps, the block's step number, t_V's index and n_V."""
        image_steps = min(int(steps * self.strength), steps)
        if image_steps < 1:
            raise SettingsError("evs_strength", self.strength, f"a strength giving at least one of {steps} steps")
        block_at = (image_steps + 1) // 2 if self.t2v_step == -1 else self.t2v_step
        if block_at > image_steps:
            raise SettingsError("evs_t2v_step", self.t2v_step, f"-1, 0 or a step in [1, {image_steps}]")
        video_total = min(int(steps * self.video_strength), steps)
        video_steps = min(DEFAULT_VIDEO_STEPS, video_total) if self.video_steps == -1 else self.video_steps
        if video_steps > video_total:
            raise SettingsError("evs_video_steps", self.video_steps,
                                f"an integer in [0, {video_total}] (int(S * video_strength) with S = {steps})")
        runs_block = block_at > 0 and video_steps > 0
        return {"image_steps": image_steps, "block_at": block_at if runs_block else 0,
                "video_start_index": steps - video_total, "video_steps": video_steps if runs_block else 0}

    def progress_steps(self, steps: int) -> Dict[str, int]:
        """Steps EVS reports through the callback, per stage: T2I steps, video steps and, with inversion, the
        inversion's steps up to t_V."""
        plan = self.plan(steps)
        inversion = steps - plan["video_start_index"] if self.inversion and plan["block_at"] else 0
        out = {"evs-image": plan["image_steps"], "evs-video": plan["video_steps"]}
        if inversion:
            out["evs-inversion"] = inversion
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EVSNoises:
    sdedit: torch.Tensor  # (1, 4, F, h, w)
    to_video: torch.Tensor  # bridge into the video block (SDEdit to t_V)
    to_image: torch.Tensor  # bridge back onto the image schedule


def draw_evs_noises(generator: torch.Generator, shape, *, fresh_bridge_noise: bool = True) -> EVSNoises:
    sdedit = torch.randn(shape, generator=generator, dtype=torch.float32)
    if not fresh_bridge_noise:
        return EVSNoises(sdedit, sdedit, sdedit)
    return EVSNoises(sdedit, torch.randn(shape, generator=generator, dtype=torch.float32),
                     torch.randn(shape, generator=generator, dtype=torch.float32))


@dataclass
class EVSResult:
    latents: torch.Tensor
    unet_calls: Dict[str, int]
    timesteps: Dict[str, List[int]] = field(default_factory=dict)
    block_input: Optional[torch.Tensor] = None  # z0^I
    block_output: Optional[torch.Tensor] = None  # z0^IV


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[t].to(x_t.dtype)
    return (x_t - (1 - a) ** 0.5 * eps) / a**0.5


def _frames(video: torch.Tensor) -> torch.Tensor:  # (1, 4, F, h, w) -> (F, 4, h, w)
    return video[0].permute(1, 0, 2, 3)


def _video(frames: torch.Tensor) -> torch.Tensor:  # (F, 4, h, w) -> (1, 4, F, h, w)
    return frames.permute(1, 0, 2, 3)[None]


def _ddim(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, prev_t: int, ac: torch.Tensor) -> torch.Tensor:
    a_prev = ac[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser, x0: torch.Tensor, up_to_index: int, *, video: bool, callback: Optional[StepCallback] = None,
    attention_store=None,
) -> torch.Tensor:
    """Deterministic DDIM inversion from a clean latent to ``timesteps[up_to_index]``.

    ``attention_store`` (from the denoiser's ``record_attention``): each step's features are filed under the level
    the step REACHES, not the timestep it evaluates the model at. The step up to level t uses the prediction at the
    level below (t_eval), and the denoising step at t undoes exactly that step when it predicts the same noise; so
    the features behind that prediction are the ones to inject at t. It also gives t_V, which the inversion never
    evaluates the model at, a record: every timestep the video steps visit has one."""
    ts = list(denoiser.timesteps)
    ac = denoiser.alphas_cumprod
    path = ts[up_to_index:][::-1]  # ascending
    x, prev_a = x0, torch.tensor(1.0)
    for i, t in enumerate(path):
        # The prediction at the previous (lower) level drives the step up to t, as in DDIM inversion.
        t_eval = path[i - 1] if i > 0 else t
        with nullcontext() if attention_store is None else attention_store.filed_under(t):
            eps = denoiser.predict_noise(x, t_eval, video=video)
        a = ac[t]
        x0_hat = (x - (1 - prev_a) ** 0.5 * eps) / prev_a**0.5
        x = a**0.5 * x0_hat + (1 - a) ** 0.5 * eps
        prev_a = a
        notify(callback, "evs-inversion", i + 1, len(path), t)
    return x


@torch.no_grad()
def evs_refine(
    denoiser: Denoiser,
    video: torch.Tensor,
    noises: EVSNoises,
    settings: EVSSettings = EVSSettings(),
    *,
    inversion_denoiser: Optional[Denoiser] = None,
    callback: Optional[StepCallback] = None,
) -> EVSResult:
    """Refine ``video`` (1, 4, F, h, w) with T2I + [T2V] + T2I. Returns the latents and the UNet calls per kind."""
    if settings.sfi:
        _check_sfi_capability(denoiser, "denoiser")
        _check_sfi_capability(inversion_denoiser or denoiser, "inversion denoiser")
    ts = list(denoiser.timesteps)
    ac = denoiser.alphas_cumprod
    plan = settings.plan(len(ts))
    image_run = ts[len(ts) - plan["image_steps"] :]
    video_run = ts[plan["video_start_index"] : plan["video_start_index"] + plan["video_steps"]]
    calls = {"image": 0, "video": 0, "inversion": 0}
    z0_i = z0_iv = None

    z = _frames(add_noise(video, noises.sdedit, image_run[0], ac))
    for j, t in enumerate(image_run):
        eps = denoiser.predict_noise(z, t, video=False)
        calls["image"] += 1
        if j + 1 == plan["block_at"]:
            z0_i = _video(x0_from_eps(z, eps, t, ac))
            z0_iv = _video_block(denoiser, z0_i, noises.to_video, video_run, plan, settings, calls,
                                 inversion_denoiser, callback)
            z = _frames(add_noise(z0_iv, noises.to_image, t, ac))
            eps = denoiser.predict_noise(z, t, video=False)
            calls["image"] += 1
        prev_t = image_run[j + 1] if j + 1 < len(image_run) else -1
        z = _ddim(z, x0_from_eps(z, eps, t, ac), eps, prev_t, ac)
        notify(callback, "evs-image", j + 1, len(image_run), t)

    calls["total"] = calls["image"] + calls["video"] + calls["inversion"]
    return EVSResult(_video(z), calls, {"image": image_run, "video": video_run}, z0_i, z0_iv)


def _check_sfi_capability(denoiser, role: str) -> None:
    if not all(callable(getattr(denoiser, m, None)) for m in ("record_attention", "inject_attention")):
        raise SettingsError("evs_sfi", True, f"false with this backbone: its {role} ({type(denoiser).__name__}) "
                                             "cannot record and inject attention features")


def _sfi_recording(inverter, settings: EVSSettings, video_run: List[int]):
    try:  # only the n_V levels the video steps visit are kept
        return inverter.record_attention(settings.sfi_layers, timesteps=video_run)
    except ValueError as error:  # a layer list the model does not have
        raise SettingsError("evs_sfi_layers", settings.sfi_layers, str(error)) from None


def _video_block(denoiser, z0_i, noise, video_run, plan, settings, calls, inversion_denoiser, callback):
    ac = denoiser.alphas_cumprod
    injection = nullcontext()
    if settings.inversion:
        inverter = inversion_denoiser or denoiser
        before = inverter.unet_calls
        if settings.sfi:
            with _sfi_recording(inverter, settings, video_run) as store:
                zv = ddim_invert(inverter, z0_i, plan["video_start_index"], video=True, callback=callback,
                                 attention_store=store)
            injection = denoiser.inject_attention(store, settings.sfi_gamma, settings.sfi_layers)
        else:
            zv = ddim_invert(inverter, z0_i, plan["video_start_index"], video=True, callback=callback)
        calls["inversion"] += inverter.unet_calls - before
    else:
        zv = add_noise(z0_i, noise, video_run[0], ac)
    ts = list(denoiser.timesteps)
    x0 = z0_i
    with injection:
        for i, t in enumerate(video_run):
            eps = denoiser.predict_noise(zv, t, video=True)
            calls["video"] += 1
            x0 = x0_from_eps(zv, eps, t, ac)
            k = ts.index(t)
            prev_t = ts[k + 1] if k + 1 < len(ts) else -1
            zv = _ddim(zv, x0, eps, prev_t, ac)
            notify(callback, "evs-video", i + 1, len(video_run), t)
    return x0

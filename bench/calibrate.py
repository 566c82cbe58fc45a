"""The cost of each kind of call, measured on the loaded model before the methods run (this is also the warm-up).

r = (one image-mode call over the N candidates) / (one video-mode call over F frames), both CFG-batched, timed
alternately so that drifting machine load hits both alike; the motion modules' share of a video call comes from
the probe's hooks on them. One VAE decode of F frames and one prompt encoding are timed too."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List

import torch

from .methods import BenchSetup
from .probes import ComponentProbe, diff, now


@dataclass
class CallCosts:
    rounds: int
    image_call_seconds: float  # median, one image-mode step over N candidates
    video_call_seconds: float  # median, one video-mode step over F frames
    motion_seconds_per_video_call: float  # median time inside the motion modules during one video call
    decode_seconds_per_frame: float
    text_encoding_seconds: float  # prompt + negative prompt
    image_calls_per_step: int  # UNet forwards per image-mode step (more than 1 when candidates are chunked)
    samples: Dict[str, List[float]]

    @property
    def r(self) -> float:
        return self.image_call_seconds / self.video_call_seconds

    @property
    def motion_share(self) -> float:
        return self.motion_seconds_per_video_call / self.video_call_seconds

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(r=self.r, motion_share=self.motion_share)
        return out


def _timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = now()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - started


@torch.no_grad()
def measure_call_costs(setup: BenchSetup, probe: ComponentProbe, rounds: int) -> CallCosts:
    """``rounds`` alternating image/video calls after one untimed pair (the warm-up)."""
    b = setup.backbone
    device = torch.device(b.device)
    h, w = setup.latent_size
    generator = torch.Generator().manual_seed(1234)
    video = torch.randn((1, 4, setup.frames, h, w), generator=generator)
    images = torch.randn((setup.candidates, 4, h, w), generator=generator)
    samples: Dict[str, List[float]] = {"image": [], "video": [], "motion": [], "decode": [], "text": []}

    denoiser = setup.denoiser()  # the first prompt encoding warms the text encoder up
    samples["text"].append(_timed(device, setup.denoiser))
    t = denoiser.timesteps[0]
    before_calls = denoiser.unet_calls
    denoiser.predict_noise(images, t, video=False)
    image_calls_per_step = denoiser.unet_calls - before_calls
    denoiser.predict_noise(video, t, video=True)
    b.decode_video(video[:, :, :1])
    for _ in range(rounds):
        samples["image"].append(_timed(device, lambda: denoiser.predict_noise(images, t, video=False)))
        before = probe.snapshot()
        samples["video"].append(_timed(device, lambda: denoiser.predict_noise(video, t, video=True)))
        samples["motion"].append(diff(probe.snapshot(), before)["motion_modules"]["seconds"])
    frames = min(setup.frames, 4)
    samples["decode"].append(_timed(device, lambda: b.decode_video(video[:, :, :frames])) / frames)
    return CallCosts(
        rounds=rounds,
        image_call_seconds=statistics.median(samples["image"]),
        video_call_seconds=statistics.median(samples["video"]),
        motion_seconds_per_video_call=statistics.median(samples["motion"]),
        decode_seconds_per_frame=statistics.median(samples["decode"]),
        text_encoding_seconds=statistics.median(samples["text"]),
        image_calls_per_step=image_calls_per_step,
        samples=samples,
    )

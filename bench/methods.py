"""The methods the benchmark compares, each one generation from prompt to decoded frames on ONE loaded backbone.

Every method of ours runs through ``core.compose.run_mode``, the composition the CLI and the WebUI run, with the
CLI's noise contract (``compose.seeded_noises``).

* ``plain``: plain AnimateDiff through our loop (``run_mode`` in mode ``plain`` over the backbone's denoiser). Its DDIM is
  diffusers' ``DDIMScheduler`` step for step (``schedule.py``); ``plain-diffusers`` runs diffusers'
  ``AnimateDiffPipeline`` on the same weights and start noise, so the two can be compared frame for frame.
* ``freeinit-3`` / ``freeinit-5``: diffusers' ``AnimateDiffPipeline.enable_free_init(num_iters=n)``.
* ``i4vgen-official`` / ``i4vgen-paper``: ``run_mode`` in mode ``i4vgen`` with the two presets.

Every method starts from the same seed: plain and FreeInit from the first (1, 4, F, h, w) draw (as ``i4vgen
generate --mode plain`` does), I4VGen from the noise contract of ``noise.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from i4vgen_ext.core.compose import run_mode, seeded_noises
from i4vgen_ext.core.denoiser import StepEvent
from i4vgen_ext.core.noise import seeded_generator
from i4vgen_ext.core.settings import I4VGenSettings

from .probes import ComponentProbe, current_rss, now

FREEINIT_ITERATIONS = (3, 5)
I4VGEN_PRESETS = ("official", "paper")


@dataclass
class BenchSetup:
    backbone: Any
    prompt: str
    frames: int
    steps: int
    candidates: int
    width: int
    height: int
    seed: int = 0
    negative_prompt: str = ""
    guidance: float = 7.5
    image_batch_size: Optional[int] = None
    ranker_name: str = "none"
    ranker_path: Optional[str] = None
    _pipeline: Any = field(default=None, repr=False)

    @property
    def latent_size(self) -> tuple[int, int]:
        scale = self.backbone.vae_scale_factor
        return self.height // scale, self.width // scale

    def plain_noise(self) -> torch.Tensor:
        h, w = self.latent_size
        return torch.randn((1, 4, self.frames, h, w), generator=seeded_generator(self.seed))

    def denoiser(self):
        return self.backbone.denoiser(self.prompt, self.negative_prompt, self.guidance, self.steps,
                                      image_batch_size=self.image_batch_size)

    def settings(self, preset: str, mode: str = "i4vgen") -> I4VGenSettings:
        return I4VGenSettings.from_preset(
            preset, prompt=self.prompt, negative_prompt=self.negative_prompt, guidance=self.guidance,
            frames=self.frames, steps=self.steps, candidates=self.candidates, width=self.width, height=self.height,
            seed=self.seed, ranker=self.ranker_name, mode=mode)

    def noises(self, settings: I4VGenSettings):
        return seeded_noises(settings, *self.latent_size)

    def pipeline(self):
        """diffusers' AnimateDiffPipeline over the backbone's own modules (no weight is copied)."""
        if self._pipeline is None:
            from diffusers import AnimateDiffPipeline, DDIMScheduler

            from i4vgen_ext.backbones.configs import scheduler_config

            b = self.backbone
            scheduler = DDIMScheduler.from_config(scheduler_config(b.schedule))
            self._pipeline = AnimateDiffPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer,
                                                 unet=b.unet, motion_adapter=None, scheduler=scheduler)
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline


@dataclass
class Outcome:
    frames: list  # PIL images, the video
    unet_calls: Dict[str, int]  # per stage, plus "total"
    seconds: Dict[str, float]  # per stage (inside the method's wall time)
    extra: Dict[str, Any] = field(default_factory=dict)


class _Stopwatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: Dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return now()

    def lap(self, name: str) -> None:
        now = self._now()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def run_plain(setup: BenchSetup) -> Outcome:
    b = setup.backbone
    watch = _Stopwatch(b.device)
    denoiser = setup.denoiser()
    watch.lap("text_encoding")
    settings = setup.settings("official", mode="plain")
    result = run_mode(denoiser, settings, setup.noises(settings))
    watch.lap("denoise")
    frames = b.decode_video(result.video)
    watch.lap("decode")
    return Outcome(frames, dict(result.unet_calls), watch.seconds)


def run_diffusers(setup: BenchSetup, iterations: int) -> Outcome:
    """diffusers' AnimateDiffPipeline; ``iterations`` 0 = FreeInit off (its plain loop), else FreeInit rounds."""
    b = setup.backbone
    pipe = setup.pipeline()
    if iterations:
        pipe.enable_free_init(num_iters=iterations, use_fast_sampling=False)
    else:
        pipe.disable_free_init()
    rounds: List[int] = []

    def count_steps(pipeline, i, t, tensors):
        if i == 0:
            rounds.append(0)
        rounds[-1] += 1
        return {}

    watch = _Stopwatch(b.device)
    latents = setup.plain_noise().to(b.device, b.dtype)
    out = pipe(prompt=setup.prompt, negative_prompt=setup.negative_prompt, num_frames=setup.frames,
               height=setup.height, width=setup.width, num_inference_steps=setup.steps,
               guidance_scale=setup.guidance, latents=latents, generator=seeded_generator(setup.seed),
               output_type="pil", decode_chunk_size=8, callback_on_step_end=count_steps)
    watch.lap("pipeline")
    calls = {f"round_{i + 1}": n for i, n in enumerate(rounds)} if iterations else {"plain": sum(rounds)}
    calls["total"] = sum(rounds)
    return Outcome(list(out.frames[0]), calls, watch.seconds)


def run_i4vgen_preset(setup: BenchSetup, preset: str, probe: Optional[ComponentProbe] = None) -> Outcome:
    """Stage seconds come from the progress callback (a lap at the end of each stage, on the benchmark's clock);
    the candidates' decode is split from ranking by the probe's VAE timing."""
    b = setup.backbone
    settings = setup.settings(preset)
    extra: Dict[str, Any] = {}
    ranker = load_bench_ranker(setup, extra)  # not timed: a load, like the model's (reported separately)
    watch = _Stopwatch(b.device)
    decode_before = [0.0]

    def on_step(event: StepEvent) -> None:
        if event.i == event.total and event.stage in ("anchors", "ni-vsds", "regeneration"):
            watch.lap(event.stage)
            if event.stage == "anchors" and probe is not None:
                decode_before[0] = probe.tally["vae_decode"].seconds
        elif event.stage == "ranking":
            watch.lap("decode_and_ranking")
            if probe is not None:
                watch.seconds["decode_candidates"] = probe.tally["vae_decode"].seconds - decode_before[0]
            extra["rss_before_release_mb"] = current_rss() / 2**20
            ranker.unload()  # released before NI-VSDS
            extra["rss_after_release_mb"] = current_rss() / 2**20
            watch.lap("ranker_release")
        if event.stage == "ni-vsds" and event.i == 1:
            extra["ranker_loaded_during_nivsds"] = bool(getattr(ranker, "is_loaded", False))

    denoiser = setup.denoiser()
    watch.lap("text_encoding")
    noises = setup.noises(settings)
    watch.lap("noise")
    result = run_mode(denoiser, settings, noises, ranker=ranker, ranker_label=setup.ranker_name,
                      decode_images=b.decode_images, keep_candidate_images=False, callback=on_step)
    watch.lap("glue")
    frames = b.decode_video(result.video)
    watch.lap("decode")
    seconds = watch.seconds
    if "decode_candidates" in seconds:
        seconds["ranking"] = seconds.pop("decode_and_ranking") - seconds["decode_candidates"]
    else:
        seconds["decode_candidates_and_ranking"] = seconds.pop("decode_and_ranking")
    order = ("text_encoding", "noise", "anchors", "decode_candidates", "ranking", "decode_candidates_and_ranking",
             "ranker_release", "ni-vsds", "regeneration", "glue", "decode")
    seconds = {k: seconds[k] for k in order if k in seconds}
    extra.update(anchor_index=result.anchor_index, ranker=result.ranker,
                 nivsds_iterations=settings.nivsds_iterations, regen_steps=settings.regen_steps)
    return Outcome(frames, dict(result.unet_calls), seconds, extra)


def run_with_evs(setup: BenchSetup, base: str) -> Outcome:
    """``base`` (``plain`` or ``i4vgen``) and then EVS refinement of its latents (the settings' EVS defaults), as
    ``i4vgen generate --mode <base>+evs`` runs it: the same composition and noise contract."""
    b = setup.backbone
    watch = _Stopwatch(b.device)
    denoiser = setup.denoiser()
    watch.lap("text_encoding")
    settings = setup.settings("official", mode=f"{base}+evs").replace(ranker="none")

    def lap_at_evs(event: StepEvent) -> None:
        if event.stage.startswith("evs") and "evs" not in stages_seen:
            stages_seen.add("evs")
            watch.lap(base)

    stages_seen: set = set()
    result = run_mode(denoiser, settings, setup.noises(settings), ranker=None, ranker_label="none",
                      decode_images=b.decode_images, keep_candidate_images=False, callback=lap_at_evs)
    watch.lap("evs")
    frames = b.decode_video(result.video)
    watch.lap("decode")
    return Outcome(frames, dict(result.unet_calls), watch.seconds, {"evs_plan": settings.evs().plan(setup.steps)})


def load_bench_ranker(setup: BenchSetup, extra: Dict[str, Any]):
    """A fresh ranker per run (released after ranking). ``none`` still makes the candidates be decoded and scored,
    so the decode cost is the real one; only the scoring itself is free."""
    from i4vgen_ext.rankers import NoneRanker, load_ranker

    if setup.ranker_name == "none":
        extra["ranker_load_seconds"], extra["ranker_weights_mb"] = 0.0, 0.0
        return NoneRanker()
    started = now()
    ranker = load_ranker(setup.ranker_name, setup.ranker_path, device=str(setup.backbone.device), offline=True,
                         use_cache=False)
    extra["ranker_load_seconds"] = now() - started
    model = getattr(ranker, "model", None)
    weights = sum(t.numel() * t.element_size() for t in model.parameters()) if model is not None else 0
    extra["ranker_weights_mb"] = weights / 2**20
    return ranker


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    run: Callable[..., Outcome]  # (setup, probe) -> Outcome
    kind: str  # "plain" | "freeinit" | "i4vgen" | "evs"
    iterations: int = 1
    preset: Optional[str] = None
    evs_base: Optional[str] = None  # kind "evs": what EVS refines ("plain" or "i4vgen")


def all_methods() -> List[Method]:
    methods = [
        Method("plain", "AnimateDiff (our DDIM loop)", lambda s, probe: run_plain(s), "plain"),
        Method("plain-diffusers", "AnimateDiff (diffusers pipeline)", lambda s, probe: run_diffusers(s, 0), "plain"),
    ]
    methods += [Method(f"freeinit-{n}", f"FreeInit, {n} iterations (diffusers)",
                       lambda s, probe, n=n: run_diffusers(s, n), "freeinit", iterations=n) for n in FREEINIT_ITERATIONS]
    methods += [Method(f"i4vgen-{p}", f"I4VGen, '{p}' preset", lambda s, probe, p=p: run_i4vgen_preset(s, p, probe), "i4vgen",
                       preset=p) for p in I4VGEN_PRESETS]
    return methods


def evs_methods() -> List[Method]:
    """Opt-in rows (``--methods plain+evs,i4vgen+evs``): EVS refinement after plain AnimateDiff or I4VGen."""
    return [Method(f"{base}+evs", f"{'AnimateDiff' if base == 'plain' else 'I4VGen official'} + EVS refinement",
                   lambda s, probe, base=base: run_with_evs(s, base), "evs", evs_base=base)
            for base in ("plain", "i4vgen")]

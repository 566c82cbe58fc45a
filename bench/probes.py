"""What the benchmark measures besides wall time, without touching the code it measures.

* ``ComponentProbe``: forward hooks on the video UNet, the image UNet view, every motion module and the text
  encoder, and a wrapper on ``vae.decode``: calls and seconds of each, and frames decoded.
* ``RssSampler``: the process's peak resident memory over one method, sampled by a thread (torch releases the
  GIL inside its kernels, so the sampler sees the peaks of the big ops).
* ``release_freed_memory``: gives freed heap pages back to the OS before a method starts, so one method's
  leftovers do not count towards the next one's RSS.
* ``now()``: the timing clock, wall time (``perf_counter``) or this process's CPU time (``process_time``). On a
  machine shared with other jobs, CPU time with one torch thread does not count the time the scheduler gives
  to others, so it measures the work itself; wall time is what a user waits on an idle machine.
"""
from __future__ import annotations

import ctypes
import gc
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: Dict[str, Callable[[], float]] = {"now": time.perf_counter}


def set_clock(name: str) -> None:
    _clock["now"] = CLOCKS[name]


def now() -> float:
    return _clock["now"]()


@dataclass
class Tally:
    calls: int = 0
    seconds: float = 0.0
    items: int = 0  # decoded frames for the VAE, batch rows otherwise

    def as_dict(self) -> Dict[str, float]:
        return {"calls": self.calls, "seconds": self.seconds, "items": self.items}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ComponentProbe:
    """Counts and times the components of a ``DiffusersBackbone`` while installed (``with probe: ...``)."""

    COMPONENTS = ("video_unet", "image_unet", "motion_modules", "vae_decode", "text_encoder")

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.device = torch.device(backbone.device)
        self.tally: Dict[str, Tally] = {name: Tally() for name in self.COMPONENTS}
        self._handles: List = []
        self._started: Dict[int, float] = {}
        self._active: List[str] = []  # components running now, outermost first
        self._original_decode: Optional[Callable] = None

    # ---- install / remove ---------------------------------------------------------------------------------
    def __enter__(self) -> "ComponentProbe":
        b = self.backbone
        self._time_module(b.unet, "video_unet")
        self._time_module(b.image_unet, "image_unet")
        self._time_module(b.text_encoder, "text_encoder")
        for module in b._motion_modules():
            self._time_module(module, "motion_modules")
        vae = b.vae
        self._original_decode = vae.decode  # the bound method; an instance attribute shadows it
        probe = self

        def decode(z, *args, **kwargs):
            probe._synchronize()
            probe._active.append("vae_decode")
            started = now()
            try:
                out = probe._original_decode(z, *args, **kwargs)
                probe._synchronize()
            finally:
                probe._active.pop()
            tally = probe.tally["vae_decode"]
            tally.calls += 1
            tally.items += int(z.shape[0])
            tally.seconds += now() - started
            return out

        vae.decode = decode
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._original_decode is not None:
            del self.backbone.vae.decode  # back to the class method
            self._original_decode = None

    def _synchronize(self) -> None:
        _synchronize(self.device)

    def _time_module(self, module: torch.nn.Module, name: str) -> None:
        key = id(module)

        def before(mod, args, kwargs):
            self._synchronize()
            self._active.append(name)
            self._started[key] = now()

        def after(mod, args, kwargs, output):
            self._synchronize()
            self._active.pop()
            tally = self.tally[name]
            tally.calls += 1
            sample = args[0] if args else kwargs.get("sample", kwargs.get("input_ids", kwargs.get("hidden_states")))
            tally.items += int(sample.shape[0]) if isinstance(sample, torch.Tensor) else 0
            tally.seconds += now() - self._started.pop(key)

        self._handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        self._handles.append(module.register_forward_hook(after, with_kwargs=True))

    # ---- reading ------------------------------------------------------------------------------------------
    def current(self) -> str:
        """The outermost component running now ("other" between calls): what a memory sample is charged to."""
        return self._active[0] if self._active else "other"

    def reset(self) -> None:
        self.tally = {name: Tally() for name in self.COMPONENTS}

    def snapshot(self) -> Dict[str, Dict[str, float]]:
        return {name: tally.as_dict() for name, tally in self.tally.items()}


def diff(after: Dict[str, Dict[str, float]], before: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    return {name: {k: after[name][k] - before[name][k] for k in after[name]} for name in after}


class RssSampler:
    """Peak RSS (bytes) of this process between ``start()`` and ``stop()``, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01, label: Optional[Callable[[], str]] = None) -> None:
        self.interval = interval
        self.label = label
        self.peak = 0
        self.start_rss = 0
        self.peak_by_label: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._process = _process()

    def start(self) -> "RssSampler":
        self.start_rss = self.peak = current_rss(self._process)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss(self._process)
            self.peak = max(self.peak, rss)
            if self.label is not None:
                name = self.label()
                self.peak_by_label[name] = max(self.peak_by_label.get(name, 0), rss)

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss(self._process))
        return self.peak


def _process():
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process()


def current_rss(process=None) -> int:
    """Resident set size in bytes (psutil, else /proc/self/statm)."""
    if process is not None:
        return int(process.memory_info().rss)
    with open("/proc/self/statm", encoding="ascii") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_method() -> str:
    return ("psutil RSS sampled every 10 ms by a thread during each method; freed heap returned with malloc_trim "
            "before each method" if _process() is not None else "/proc/self/statm RSS sampled every 10 ms")


_LIBC = None


def release_freed_memory(device: torch.device) -> None:
    """Collect garbage, hand freed malloc arenas back to the OS (glibc) and empty the CUDA cache."""
    global _LIBC
    gc.collect()
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class MemoryWindow:
    """Peak host RSS and (on CUDA) peak allocated GPU memory over one ``with`` block."""

    device: torch.device
    label: Optional[Callable[[], str]] = None  # charges each sample to a component (ComponentProbe.current)
    rss_start_mb: float = 0.0
    peak_rss_mb: float = 0.0
    growth_by_label_mb: Dict[str, float] = field(default_factory=dict)
    peak_gpu_mb: Optional[float] = None
    _sampler: Optional[RssSampler] = field(default=None, repr=False)

    def __enter__(self) -> "MemoryWindow":
        release_freed_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sampler = RssSampler(label=self.label).start()
        self.rss_start_mb = self._sampler.start_rss / 2**20
        return self

    def __exit__(self, *exc) -> None:
        _synchronize(self.device)
        self.peak_rss_mb = self._sampler.stop() / 2**20
        self.growth_by_label_mb = {k: v / 2**20 - self.rss_start_mb for k, v in self._sampler.peak_by_label.items()}
        if self.device.type == "cuda":
            self.peak_gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

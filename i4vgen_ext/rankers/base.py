"""What every ranker is: ``score(prompt, images) -> one float per image``, ``unload()``, a ``name``."""
from __future__ import annotations

import gc
import logging
from typing import Any, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from PIL import Image

from ..errors import RankerLoadError

log = logging.getLogger("i4vgen")

DTypeLike = Union[None, str, torch.dtype]

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


@runtime_checkable
class Ranker(Protocol):
    name: str

    def score(self, prompt: str, images: Sequence[Image.Image]) -> List[float]:
        """One float per image (N >= 1, any size or mode); higher is better."""
        ...

    def unload(self) -> None:
        """Free the model's memory; the ranker cannot score afterwards."""
        ...


class NoneRanker:
    """No model: every candidate scores the same, so candidate 0 wins (plain "first seed")."""

    name = "none"

    def score(self, prompt: str, images: Sequence[Image.Image]) -> List[float]:
        check_images(images)
        return [0.0] * len(images)

    def unload(self) -> None:
        pass


def check_images(images: Sequence[Image.Image]) -> None:
    if len(images) == 0:
        raise ValueError("a ranker needs at least one image")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL.Image.Image")


def resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    """None means float32, the precision the reference scores were computed in."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}") from None


def release_device_memory(device: torch.device) -> None:
    """After a model left ``device``: hand its cached blocks back so the video model gets them."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class DeviceSession:
    """Moves ``module`` to the compute device for one scoring and back to the CPU after it, freeing the device.

    Scoring on the CPU needs no moves. Used as ``with DeviceSession(module, device) as run_device: ...``."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.device = module, device

    def __enter__(self) -> torch.device:
        if self.device.type != "cpu":
            self.module.to(self.device)
        return self.device

    def __exit__(self, *exc) -> None:
        if self.device.type != "cpu":
            self.module.to("cpu")
            release_device_memory(self.device)


def describe_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    return torch.device(device if device is not None else "cpu")


class ModelRanker:
    """What the model-backed rankers share: scoring on ``device`` with one retry on the CPU when the device runs out
    of memory, and ``unload``. A subclass turns the prompt and images into tensors (``inputs``) and scores them on
    one device (``_score_on``)."""

    name: str

    def __init__(self, model: Any, device: torch.device, batch_size: int = 16):
        self.model, self.device, self.batch_size = model, device, batch_size

    @property
    def is_loaded(self) -> bool:
        return self.model is not None

    def inputs(self, prompt: str, images: Sequence[Image.Image]) -> Tuple[Any, ...]:
        raise NotImplementedError

    def _score_on(self, device: torch.device, *inputs: Any) -> List[float]:
        raise NotImplementedError

    def score(self, prompt: str, images: Sequence[Image.Image]) -> List[float]:
        check_images(images)
        if self.model is None:
            raise RuntimeError(f"the {self.name} ranker was unloaded; load it again")
        inputs = self.inputs(prompt, images)
        try:
            return self._score_on(self.device, *inputs)
        except Exception as error:
            if self.device.type == "cpu" or not is_out_of_memory(error):
                raise
            log.warning("%s ran out of memory on %s; scoring on the CPU instead", self.name, self.device)
            release_device_memory(self.device)
            return self._score_on(torch.device("cpu"), *inputs)

    def unload(self) -> None:
        self.model = None
        release_device_memory(self.device)


def load_failure(ranker: str, error: BaseException, searched: Sequence[str], hint: str, where: Any,
                 reason: str = "corrupt or unreadable checkpoint") -> RankerLoadError:
    """The load error for what building a ranker's model raised: out of memory, or ``reason``."""
    return RankerLoadError(ranker, "out of memory" if is_out_of_memory(error) else reason, searched, hint,
                           f"{where}: {error}")

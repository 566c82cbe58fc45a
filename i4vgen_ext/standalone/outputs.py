"""Writing results: videos (Pillow for GIF/WebP, imageio-ffmpeg for MP4), the candidates sheet, run.json, latents."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

VIDEO_FORMATS = ("gif", "mp4", "webp")


def write_video(frames: Sequence[Image.Image], path: Path, fps: float = 8.0) -> Path:
    """Write ``frames`` as an animation whose format follows the file's suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"format = {fmt!r} is not allowed: expected one of {', '.join(VIDEO_FORMATS)}")
    if not frames:
        raise ValueError("no frames to write")
    rgb = [f.convert("RGB") for f in frames]
    duration = int(round(1000 / fps))
    if fmt == "gif":
        rgb[0].save(path, save_all=True, append_images=rgb[1:], duration=duration, loop=0)
    elif fmt == "webp":
        rgb[0].save(path, save_all=True, append_images=rgb[1:], duration=duration, loop=0, quality=90)
    else:
        import imageio.v2 as imageio
        import numpy as np

        # One x264 thread: its output bytes depend on the thread count, which follows the CPUs this process may
        # use; fixed, the same frames give the same file on every machine and under every launcher (i4vgen batch).
        writer = imageio.get_writer(
            str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=16,
            ffmpeg_params=["-threads", "1"],
        )
        try:
            for frame in rgb:
                writer.append_data(np.asarray(frame))
        finally:
            writer.close()
    return path


def candidates_sheet(
    images: Sequence[Image.Image],
    scores: Optional[Sequence[float]],
    chosen: int,
    *,
    columns: int = 8,
    label_height: int = 14,
    title: Optional[str] = None,
) -> Image.Image:
    """A contact sheet of the candidates, each captioned with its index and score; the chosen one framed in red.
    ``title`` (e.g. the demo model's label) is written above them."""
    w, h = images[0].size
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    pad = 4
    top = label_height + pad if title else 0
    font = ImageFont.load_default()
    width = columns * (w + pad) + pad
    if title:
        width = max(width, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * pad)
    sheet = Image.new("RGB", (width, top + rows * (h + label_height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill="red", font=font)
    for k, image in enumerate(images):
        x = pad + (k % columns) * (w + pad)
        y = top + pad + (k // columns) * (h + label_height + pad)
        sheet.paste(image.convert("RGB"), (x, y))
        caption = f"#{k}" + (f" {scores[k]:.3f}" if scores is not None else "") + (" *" if k == chosen else "")
        draw.text((x + 1, y + h + 1), caption, fill="red" if k == chosen else "black", font=font)
        if k == chosen:
            draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline="red", width=2)
    return sheet


def write_run_json(path: Path, record: Dict) -> Path:
    """Strict JSON: a number that is not finite (a NaN score, say) is written as null, never as ``NaN``."""
    text = json.dumps(_finite(record), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    Path(path).write_text(text + "\n")
    return Path(path)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _finite(value.tolist())
    return value


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_latents(path: Path, **tensors: Optional[torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    # clone: stages may hand back the same tensor (regeneration strength 0 keeps the NI-VSDS video), and
    # safetensors refuses tensors that share memory.
    save_file({k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in tensors.items()
               if v is not None}, str(path))
    return Path(path)


class OutputSet:
    """A run's files, written whole or not at all. Files go into a staging folder beside ``out``; ``commit`` moves
    them in, after removing the previous run's outputs (the files its run.json listed and the names a run writes;
    nothing else in the folder is touched), with run.json last: a folder with a run.json holds one complete run.
    ``discard`` (interrupt, error) removes the staging folder and leaves ``out`` as it was."""

    KNOWN = tuple(f"video.{fmt}" for fmt in VIDEO_FORMATS) + ("candidates.png", "latents.safetensors", "run.json")

    def __init__(self, out: Path) -> None:
        import tempfile

        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise OSError(f"out = {str(self.out)!r} is a file: expected a folder")
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.i4vgen-", dir=parent))
        except OSError as error:
            raise OSError(f"out = {str(self.out)!r} is not writable ({error.strerror or error})") from None
        self.files: list = []

    def path(self, name: str) -> Path:
        self.files.append(name)
        return self.staging / name

    def commit(self, record: Dict) -> Path:
        write_run_json(self.staging / "run.json", record)
        self.out.mkdir(parents=True, exist_ok=True)
        for name in self._previous_files():
            (self.out / name).unlink(missing_ok=True)
        for name in self.files:
            (self.staging / name).replace(self.out / name)
        (self.staging / "run.json").replace(self.out / "run.json")
        self.staging.rmdir()
        return self.out

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.staging, ignore_errors=True)

    def _previous_files(self) -> list:
        names = ["run.json"]  # first: from here on the folder claims no run until the new one lands
        try:
            listed = json.loads((self.out / "run.json").read_text())["output"]["files"]
            names += [n for n in listed if isinstance(n, str) and Path(n).name == n]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return names + [n for n in self.KNOWN if n not in names]

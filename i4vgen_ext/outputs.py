"""Writing results: videos (Pillow for GIF/WebP, imageio-ffmpeg for MP4), the candidates sheet, run.json, latents."""
from __future__ import annotations

import json
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

        writer = imageio.get_writer(
            str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=16
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
) -> Image.Image:
    """A contact sheet of the candidates, each captioned with its index and score; the chosen one framed in red."""
    w, h = images[0].size
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    pad = 4
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + label_height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, image in enumerate(images):
        x = pad + (k % columns) * (w + pad)
        y = pad + (k // columns) * (h + label_height + pad)
        sheet.paste(image.convert("RGB"), (x, y))
        caption = f"#{k}" + (f" {scores[k]:.3f}" if scores is not None else "") + (" *" if k == chosen else "")
        draw.text((x + 1, y + h + 1), caption, fill="red" if k == chosen else "black", font=font)
        if k == chosen:
            draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline="red", width=2)
    return sheet


def write_run_json(path: Path, record: Dict) -> Path:
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return Path(path)


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

    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items() if v is not None},
              str(path))
    return Path(path)

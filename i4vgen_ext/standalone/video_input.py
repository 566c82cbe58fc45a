"""Reading an existing video (GIF, WebP, MP4/WebM, or a folder of frames) for EVS refinement."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from PIL import Image, ImageSequence

from ..core.anchor_image import fit_to_video, to_rgb8, too_many_pixels
from ..core.settings import SettingsError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_video_frames(path: Path, max_frames: Optional[int] = None) -> List[Image.Image]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        frames = [_open(p) for p in files]
    elif path.suffix.lower() in (".gif", ".webp", ".png"):
        with _opened(path) as image:
            frames = [to_rgb8(frame.copy()) for frame in ImageSequence.Iterator(image)]
    elif path.suffix.lower() in (".mp4", ".webm", ".mov", ".mkv", ".avi"):
        frames = _read_with_imageio(path)
    else:
        raise SettingsError("video", str(path), "a GIF/WebP/MP4/WebM file or a folder of frames")
    if not frames:
        raise SettingsError("video", str(path), "a video with at least one frame")
    return frames[:max_frames] if max_frames else frames


def video_size(frames: List[Image.Image], width: Optional[int], height: Optional[int]) -> Tuple[int, int]:
    """The refinement size: the one asked for, else the source's rounded down to a multiple of 8 (at least 64)."""
    w, h = frames[0].size
    return (width or max(64, w // 8 * 8), height or max(64, h // 8 * 8))


def fit_frames(frames: List[Image.Image], width: int, height: int) -> List[Image.Image]:
    return [fit_to_video(f, width, height) for f in frames]


def _opened(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise SettingsError("video", str(path), too_many_pixels(err)) from None
    except (OSError, ValueError) as err:
        raise SettingsError("video", str(path), f"a readable video or image ({err})") from None


def _open(path: Path) -> Image.Image:
    with _opened(path) as image:
        return to_rgb8(image.copy())


def _read_with_imageio(path: Path) -> List[Image.Image]:
    try:
        import imageio.v2 as imageio
    except ImportError as err:  # pragma: no cover - imageio is a standalone dependency
        raise SettingsError("video", str(path), "GIF/WebP/frames (MP4 needs imageio and imageio-ffmpeg)") from err
    try:
        reader = imageio.get_reader(str(path))
        try:
            return [Image.fromarray(frame).convert("RGB") for frame in reader]
        finally:
            reader.close()
    except (OSError, RuntimeError, ValueError) as err:
        raise SettingsError("video", str(path), f"a readable video ({err})") from None

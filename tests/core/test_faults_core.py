"""Input faults the CLI reports as one line without diffusers: images past Pillow's decompression-bomb guard,
a core-only install (no diffusers), and the test suite's own throwaway folders. Fixtures are built in tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from i4vgen_ext.core.anchor_image import load_anchor_image
from i4vgen_ext.core.settings import SettingsError

from ..cli_helpers import cli_error

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture
def small_bomb_limit(monkeypatch):
    """Pillow refuses images over 2 * MAX_IMAGE_PIXELS; a limit of 100 makes a 20x20 image a 'bomb'."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


def bomb(path: Path, frames: int = 1) -> Path:
    images = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(frames)]
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # Pillow 9.5's GIF writer reopens frames
    try:
        images[0].save(path, save_all=frames > 1, append_images=images[1:])
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return path


def test_anchor_image_past_the_bomb_guard_names_the_file_and_the_pixels(tmp_path, small_bomb_limit, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("I4VGEN_CACHE", str(tmp_path / "cache"))
    path = bomb(tmp_path / "huge.png")
    with pytest.raises(SettingsError, match="at most 200 pixels.*this one has 400 pixels"):
        load_anchor_image(path)
    line = cli_error(capsys, "generate", "--prompt", "a cat", "--out", str(tmp_path / "out"), "--quiet",
                     "--anchor-image", str(path))
    assert str(path) in line and "400 pixels" in line and "200 pixels" in line and "decompression-bomb" in line
    assert not (tmp_path / "cache").exists()  # refused before any model work
    with pytest.raises(SettingsError, match="<image bytes>.*400 pixels"):
        load_anchor_image(path.read_bytes())


@pytest.mark.parametrize("kind", ["gif", "folder"])
def test_refine_input_past_the_bomb_guard_names_the_file_and_the_pixels(kind, tmp_path, small_bomb_limit, capsys):
    if kind == "gif":
        video = bomb(tmp_path / "huge.gif", frames=2)
        named = video
    else:
        video = tmp_path / "frames"
        video.mkdir()
        Image.new("RGB", (8, 8)).save(video / "000.png")
        named = bomb(video / "001.png")
    line = cli_error(capsys, "refine", "--video", str(video), "--prompt", "a cat", "--out", str(tmp_path / "out"),
                     "--quiet")
    assert str(named) in line and "this one has 400 pixels" in line and "at most 200 pixels" in line


def test_core_only_install_says_what_to_install(tmp_path, capsys, monkeypatch):
    """Without diffusers (simulated here, real in the host-like venv) the CLI names the missing package."""
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.setenv("I4VGEN_CACHE", str(tmp_path / "cache"))
    line = cli_error(capsys, "generate", "--prompt", "a cat", "--out", str(tmp_path / "out"), "--quiet",
                     "--mode", "plain")
    assert 'pip install "i4vgen[standalone]"' in line and "diffusers" in line
    assert not (tmp_path / "cache").exists()
    from i4vgen_ext.backbones.loading import require_standalone
    from i4vgen_ext.errors import MissingDependencyError

    with pytest.raises(ImportError) as caught:  # still an ImportError for library callers
        require_standalone()
    assert isinstance(caught.value, MissingDependencyError) and caught.value.name == "diffusers"


def test_the_test_suite_removes_its_throwaway_folders(tmp_path):
    """tests/conftest.py makes an HF_HOME and an I4VGEN_CACHE in the temp dir when none is set: gone afterwards."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "I4VGEN_CACHE")}
    env.update(TMPDIR=str(temp), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"),
         "tests/core/test_settings.py", "-k", "preset"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in temp.iterdir() if p.name.startswith("i4vgen-")) == []

"""Ranker fixtures: tiny model files written once per session; every test sees empty search locations
(HOME, the HF cache and the WebUI models dir point at fresh temporary folders) unless it fills them itself."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from .ranker_fixtures import write_clip_model, write_clip_processor, write_imagereward


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("I4VGEN_WEBUI_MODELS_DIR", raising=False)
    yield tmp_path
    from i4vgen_ext.rankers import unload_cached

    unload_cached()


@pytest.fixture(scope="session")
def imagereward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagereward(tmp_path_factory.mktemp("imagereward"), seed=0)


@pytest.fixture(scope="session")
def imagereward(imagereward_dir: Path):
    from i4vgen_ext.rankers import load_ranker

    return load_ranker("imagereward", imagereward_dir, use_cache=False)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    write_clip_model(folder, seed=0)
    write_clip_processor(folder)
    return folder


@pytest.fixture(scope="session")
def candidates() -> List[Image.Image]:
    """Noise images of several sizes and modes (square, landscape, portrait, small, odd margins, RGBA, L, palette)."""
    rng = np.random.default_rng(0)

    def noise(w: int, h: int, channels: int = 3) -> np.ndarray:
        return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)

    # 227 and 231: odd crop margins, where the centre crop's rounding shows
    rgb = [Image.fromarray(noise(w, h)) for w, h in [(224, 224), (320, 256), (200, 300), (64, 64), (227, 224), (224, 231)]]
    rgba = Image.fromarray(noise(240, 240, 4), "RGBA")
    return rgb + [rgba, rgb[1].convert("L"), rgb[2].convert("P")]

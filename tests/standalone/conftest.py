"""Session fixtures for the diffusers backbone: the tiny demo model built once into a temporary cache, its
single-file (A1111 checkpoint + AnimateDiff mm) twins, and one loaded backbone. Everything is offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import pytest

pytest.importorskip("diffusers")

if "OMP_NUM_THREADS" not in os.environ:
    import torch

    # Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads contending
    # with other processes make each forward 10-60x slower (measured). OMP_NUM_THREADS overrides this.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("i4vgen-cache")


@pytest.fixture(scope="session")
def demo_model_dir(demo_cache_root: Path) -> Path:
    from i4vgen_ext.backbones.tiny import ensure_demo_model

    return ensure_demo_model(demo_cache_root)


@pytest.fixture(scope="session")
def single_file_fixtures(demo_model_dir: Path, tmp_path_factory) -> Tuple[Path, Path]:
    from i4vgen_ext.backbones.tiny import write_single_file_fixtures

    return write_single_file_fixtures(demo_model_dir, tmp_path_factory.mktemp("single-file"))


@pytest.fixture(scope="session")
def demo_backbone(demo_model_dir: Path):
    """Shared and read-only: tests that change weights (LoRA) load their own."""
    from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone

    return DiffusersBackbone.load(str(demo_model_dir))

"""The registry: lazy imports, the per-process cache and its unloading, the fallback policy, device handling."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import i4vgen_ext.rankers as rankers
from i4vgen_ext.core.stages import select_anchor
from i4vgen_ext.rankers import (
    NoneRanker,
    Ranker,
    RankerLoadError,
    available_rankers,
    cached_rankers,
    load_ranker,
    load_ranker_with_fallback,
    register_ranker,
    unload_cached,
)
from i4vgen_ext.rankers.base import DeviceSession

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rankers registered by a test disappear after it."""
    from i4vgen_ext.rankers import registry

    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))


def test_every_ranker_the_settings_offer_is_registered() -> None:
    from i4vgen_ext.core.settings import FALLBACKS, RANKERS

    assert set(RANKERS) <= set(available_rankers()) and rankers.DEFAULT_RANKER == "imagereward"
    assert tuple(FALLBACKS) == rankers.FALLBACKS


def test_none_scores_every_candidate_equally_so_candidate_0_wins(candidates) -> None:
    ranker = load_ranker("none")
    assert isinstance(ranker, Ranker) and ranker.name == "none"
    for n in (1, 2, len(candidates)):
        scores = ranker.score("anything", candidates[:n])
        assert scores == [0.0] * n and select_anchor(scores) == 0
    with pytest.raises(ValueError):
        ranker.score("anything", [])


class PlantedRanker:
    name = "planted"

    def __init__(self, scores):
        self.scores, self.calls, self.unloaded = list(scores), 0, False

    def score(self, prompt, images):
        self.calls += 1
        return self.scores[: len(images)]

    def unload(self):
        self.unloaded = True


@pytest.mark.parametrize("scores, winner", [([0.1, 0.9, 0.9, 0.2], 1), ([0.5, 0.5], 0), ([-1.0], 0), ([0.2, 0.3], 1)])
def test_highest_score_wins_and_ties_go_to_the_lowest_index(scores, winner, candidates) -> None:
    register_ranker("planted", lambda path=None, **_: PlantedRanker(scores))
    ranker, label = load_ranker_with_fallback("planted", fallback="error")
    assert label == "planted"
    assert select_anchor(ranker.score("p", candidates[: len(scores)])) == winner


def test_a_registered_loader_is_cached_per_settings_and_unloaded_on_request(tmp_path: Path) -> None:
    built = []

    def loader(path=None, **settings):
        built.append((path, settings))
        return PlantedRanker([1.0])

    register_ranker("counted", loader)
    first = load_ranker("counted", tmp_path)
    assert load_ranker("counted", tmp_path) is first and len(built) == 1
    assert load_ranker("counted", tmp_path, use_cache=False) is not first and len(built) == 2
    assert load_ranker("counted", tmp_path, dtype=torch.float16) is not first  # another dtype, another model
    assert load_ranker("counted", tmp_path, device="meta") is not first
    assert len(built) == 4 and built[0][1]["device"] == "cpu" and built[2][1]["dtype"] == torch.float16
    assert unload_cached() == 3 and first.unloaded and cached_rankers() == {}
    assert load_ranker("counted", tmp_path) is not first and len(built) == 5


def test_an_unloaded_imagereward_is_reloaded_from_the_cache_key(imagereward_dir: Path, candidates) -> None:
    ranker = load_ranker("imagereward", imagereward_dir)
    assert load_ranker("imagereward", imagereward_dir) is ranker
    expected = ranker.score("a cat", candidates[:2])
    ranker.unload()
    assert not ranker.is_loaded
    with pytest.raises(RuntimeError, match="unloaded"):
        ranker.score("a cat", candidates[:2])
    again = load_ranker("imagereward", imagereward_dir)
    assert again is not ranker and again.score("a cat", candidates[:2]) == expected
    assert unload_cached() == 1 and not again.is_loaded


def test_unknown_rankers_and_fallbacks_are_rejected() -> None:
    with pytest.raises(ValueError, match="imagereward"):
        load_ranker("hpsv9")
    with pytest.raises(ValueError, match="fallback"):
        load_ranker_with_fallback("none", fallback="ignore")


def test_out_of_memory_while_loading_is_a_load_error_and_can_fall_back() -> None:
    def exhausted(path=None, **_):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.79 GiB")

    register_ranker("huge", exhausted)
    with pytest.raises(RankerLoadError, match="out of memory"):
        load_ranker("huge")
    ranker, label = load_ranker_with_fallback("huge", fallback="none")
    assert isinstance(ranker, NoneRanker) and label == "none (fallback: huge out of memory)"


def test_the_model_visits_the_device_only_while_scoring(monkeypatch) -> None:
    moves = []
    module = torch.nn.Linear(2, 2)
    monkeypatch.setattr(module, "to", lambda device: moves.append(str(device)) or module)
    with DeviceSession(module, torch.device("cuda")) as device:
        assert moves == ["cuda"] and device.type == "cuda"
    assert moves == ["cuda", "cpu"]
    with DeviceSession(module, torch.device("cpu")):
        pass
    assert moves == ["cuda", "cpu"]  # scoring on the CPU moves nothing


def test_out_of_memory_while_scoring_on_the_device_retries_on_the_cpu(imagereward, candidates, monkeypatch) -> None:
    expected = imagereward.score("a cat", candidates[:3])
    real = type(imagereward)._score_on
    devices = []

    def score_on(self, device, pixels, tokens):
        devices.append(device.type)
        if device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(self, device, pixels, tokens)

    monkeypatch.setattr(type(imagereward), "_score_on", score_on)
    monkeypatch.setattr(imagereward, "device", torch.device("cuda"))
    assert imagereward.score("a cat", candidates[:3]) == expected and devices == ["cuda", "cpu"]


def _run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_rankers_and_using_none_imports_no_model_code() -> None:
    out = _run("""
        import sys
        import i4vgen_ext.rankers as r
        r.load_ranker_with_fallback("none")
        heavy = ("transformers", "diffusers", "ImageReward", "i4vgen_ext.rankers.imagereward", "i4vgen_ext.rankers.clip")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_loading_imagereward_imports_neither_diffusers_nor_the_image_reward_package(imagereward_dir: Path) -> None:
    before = set(sys.modules)
    load_ranker("imagereward", imagereward_dir, use_cache=False)
    new = set(sys.modules) - before
    assert not [m for m in new if m.split(".")[0] in ("diffusers", "ImageReward")]


def test_no_ranker_source_refers_to_the_image_reward_package_or_diffusers() -> None:
    for source in Path(rankers.__file__).parent.glob("*.py"):
        text = source.read_text()
        for banned in ("import ImageReward", "from ImageReward", "import diffusers", "from diffusers"):
            assert banned not in text, f"{source.name}: {banned}"

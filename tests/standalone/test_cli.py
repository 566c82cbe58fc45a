"""The ``i4vgen`` CLI end to end on the embedded demo model: outputs, run.json and latents contracts."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from i4vgen_ext.standalone.cli import main


@pytest.fixture(autouse=True)
def _demo_cache(demo_model_dir, monkeypatch):
    # The session's demo model lives in demo_model_dir's parent: point the CLI's cache there (no rebuild).
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))


class StubRanker:
    name = "stub"

    def __init__(self):
        self.calls = []

    def score(self, prompt, images):
        self.calls.append((prompt, len(images)))
        return [float(i % 3) for i in range(len(images))]

    def unload(self):
        pass


def _run(tmp_path, *extra):
    out = tmp_path / "out"
    code = main(["generate", "--prompt", "a cat <lora:x:1>", "--out", str(out), "--quiet", "--seed", "5", *extra])
    return code, out


def test_official_defaults_cost_66_calls_and_write_the_contract(tmp_path, monkeypatch):
    from i4vgen_ext.rankers import registry

    stub = StubRanker()
    monkeypatch.setitem(registry._LOADERS, "imagereward", lambda path=None, **kw: stub)
    code, out = _run(tmp_path, "--save-latents", "--format", "gif,mp4,webp")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["unet_calls"] == {"anchor": 25, "nivsds": 16, "regeneration": 25, "total": 66}
    assert run["motion_module_calls_in_anchor_stage"] == 0
    assert run["model"]["demo"] is True and "random weights" in run["model"]["name"]
    assert run["seed"] == 5 and run["ranker"] == "stub" and stub.calls == [("a cat <lora:x:1>", 16)]
    assert len(run["scores"]) == 16 and run["anchor_index"] == 2  # 0,1,2,0,1,2...: first 2 wins
    assert run["timesteps"]["nivsds"] == list(range(961, 360, -40))
    assert run["timesteps"]["regeneration"][0] == 961 and len(run["timesteps"]["regeneration"]) == 25
    settings = run["settings"]
    assert settings["candidates"] == 16 and settings["frames"] == 16 and settings["width"] == 64
    assert settings["schedule"]["beta_schedule"] == "linear" and settings["schedule"]["steps_offset"] == 1
    assert set(run["seconds"]) >= {"anchors", "ranking", "nivsds", "regeneration", "decode_video"}
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == 16 and gif.size == (64, 64)
    with Image.open(out / "video.webp") as webp:
        assert webp.n_frames == 16
    import imageio.v3 as iio

    assert iio.imread(out / "video.mp4").shape[0] == 16
    assert (out / "candidates.png").is_file()
    latents = load_file(out / "latents.safetensors")
    assert latents["candidates"].shape == (16, 4, 8, 8)
    assert latents["nivsds"].shape == latents["final"].shape == (1, 4, 16, 8, 8)
    # The anchor really is the winning candidate: the NI-VSDS input was candidate 2 repeated (checked in core
    # tests); here the candidates differ and the final video is not the static one.
    assert not torch.equal(latents["candidates"][0], latents["candidates"][1])
    assert not torch.equal(latents["final"][0, :, 0], latents["final"][0, :, 1])


def test_same_seed_reproduces_bit_for_bit(tmp_path):
    args = ("--ranker", "none", "--frames", "3", "--candidates", "2", "--steps", "3", "--save-latents")
    _, a = _run(tmp_path / "a", *args)
    _, b = _run(tmp_path / "b", *args)
    la, lb = load_file(a / "latents.safetensors"), load_file(b / "latents.safetensors")
    assert all(torch.equal(la[k], lb[k]) for k in ("candidates", "nivsds", "final"))
    run = json.loads((a / "run.json").read_text())
    assert run["ranker"] == "none" and run["scores"] is None and run["anchor_index"] == 0


def test_n_differs_from_f_and_small_f(tmp_path):
    code, out = _run(tmp_path, "--ranker", "none", "--frames", "5", "--candidates", "3", "--steps", "4",
                     "--save-latents", "--regen-strength", "0.5", "--anchor-index", "1")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["unet_calls"] == {"anchor": 4, "nivsds": 3, "regeneration": 2, "total": 9}
    assert run["anchor_index"] == 1 and run["ranker"] == "manual"
    latents = load_file(out / "latents.safetensors")
    assert latents["candidates"].shape[0] == 3 and latents["final"].shape[2] == 5


def test_bad_settings_fail_before_model_work(tmp_path, capsys, monkeypatch):
    import i4vgen_ext.standalone.generate as job

    monkeypatch.setattr(job, "_load_backbone", lambda *a: pytest.fail("model loaded despite a bad setting"))
    code, _ = _run(tmp_path, "--regen-strength", "1.5")
    assert code == 2 and "regen_strength = 1.5" in capsys.readouterr().err
    code, _ = _run(tmp_path, "--format", "avi")
    assert code == 2 and "format = 'avi'" in capsys.readouterr().err
    code, _ = _run(tmp_path, "--lora", str(tmp_path / "missing.safetensors"))
    assert code == 2 and "lora =" in capsys.readouterr().err


def test_ranker_fallback_is_recorded(tmp_path):
    code, out = _run(tmp_path, "--ranker", "imagereward", "--ranker-path", str(tmp_path / "nowhere"),
                     "--ranker-fallback", "none", "--frames", "2", "--candidates", "2", "--steps", "2")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["ranker"].startswith("none (fallback:") and run["anchor_index"] == 0


def test_anchor_image_skips_candidates(tmp_path):
    image = tmp_path / "anchor.png"
    Image.new("RGBA", (90, 50), (200, 30, 30, 255)).save(image)
    code, out = _run(tmp_path, "--anchor-image", str(image), "--frames", "3", "--steps", "5")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["unet_calls"] == {"anchor": 0, "nivsds": 4, "regeneration": 5, "total": 9}
    assert run["ranker"] == "anchor image" and not (out / "candidates.png").exists()


def test_plain_and_evs_modes(tmp_path):
    code, out = _run(tmp_path / "p", "--mode", "plain+evs", "--frames", "3", "--steps", "10", "--ranker", "none")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["unet_calls"]["plain"] == 10
    # One flat shape for UNet calls in every entry point (CLI, WebUI infotext, benchmark).
    assert {k: v for k, v in run["unet_calls"].items() if k.startswith("evs_")} == {
        "evs_image": 5, "evs_video": 3, "evs_inversion": 0}
    assert run["unet_calls"]["total"] == 18
    code, out = _run(tmp_path / "r", "--mode", "i4vgen+evs", "--frames", "3", "--candidates", "2", "--steps", "10",
                     "--ranker", "none", "--evs-video-steps", "0")
    run = json.loads((out / "run.json").read_text())
    assert code == 0 and run["unet_calls"]["total"] == 10 + 7 + 10 + 4


def test_refine_a_video_file_of_odd_size(tmp_path):
    frames = [Image.new("RGB", (70, 45), (i * 40, 100, 50)) for i in range(5)]
    src = tmp_path / "in.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    out = tmp_path / "refined"
    code = main(["refine", "--video", str(src), "--prompt", "a cat", "--out", str(out), "--steps", "10",
                 "--seed", "1", "--quiet", "--save-latents"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["input"]["frames"] == 5 and run["settings"]["width"] == 64 and run["settings"]["height"] == 64
    assert run["unet_calls"]["evs_video"] == 3
    assert load_file(out / "latents.safetensors")["final"].shape == (1, 4, 5, 8, 8)
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == 5


def test_missing_ranker_weights_fail_fast_with_the_named_error(tmp_path, capsys, monkeypatch):
    import i4vgen_ext.standalone.generate as job

    monkeypatch.setattr(job, "_load_backbone", lambda *a: pytest.fail("model loaded before the ranker failed"))
    code, out = _run(tmp_path, "--ranker", "imagereward", "--ranker-path", str(tmp_path / "nowhere"))
    err = capsys.readouterr().err
    assert code == 2 and "imagereward" in err and "nowhere" in err and "Traceback" not in err


def test_image_batch_size_is_a_memory_budget(tmp_path):
    code, out = _run(tmp_path, "--ranker", "none", "--frames", "2", "--candidates", "3", "--steps", "3",
                     "--image-batch-size", "2", "--save-latents")
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["unet_calls"]["anchor"] == 3 * 2  # ceil(3 / 2) image-mode calls per step
    _, whole = _run(tmp_path / "whole", "--ranker", "none", "--frames", "2", "--candidates", "3", "--steps", "3",
                    "--save-latents")
    chunked, single = load_file(out / "latents.safetensors"), load_file(whole / "latents.safetensors")
    # Same candidates up to float rounding of a different batch size.
    torch.testing.assert_close(chunked["candidates"], single["candidates"], rtol=1e-3, atol=1e-4)
    code, _ = _run(tmp_path / "bad", "--image-batch-size", "0")
    assert code == 2

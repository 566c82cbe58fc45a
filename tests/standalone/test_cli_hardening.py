"""The CLI as a new user and a careless one meet it: numbers checked before model work, output folders that never
mix two runs, Ctrl-C that leaves nothing half written, the demo model labelled as such."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from i4vgen_ext.standalone.cli import main

from ..cli_helpers import cli_error

BASE = ["--prompt", "a cat", "--quiet", "--seed", "5", "--frames", "2", "--candidates", "2", "--steps", "3",
        "--ranker", "none"]


@pytest.fixture(autouse=True)
def _demo_cache(demo_model_dir, monkeypatch):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))


@pytest.fixture
def no_model(monkeypatch):
    import i4vgen_ext.standalone.generate as job

    monkeypatch.setattr(job, "_load_backbone", lambda *a: pytest.fail("model loaded despite a bad setting"))


@pytest.mark.parametrize("flags, needle", [
    (["--fps", "nan"], "fps = nan"), (["--fps", "inf"], "fps = inf"), (["--fps", "0"], "fps = 0.0"),
    (["--steps", "1000"], "steps = 1000 is not allowed: expected an integer in [1, 999]"),
    (["--seed", "-2"], "[-1, 4294967295]"),
])
def test_numbers_are_checked_before_model_work(tmp_path, capsys, no_model, flags, needle):
    line = cli_error(capsys, "generate", *BASE, "--out", str(tmp_path / "out"), *flags)
    assert needle in line
    assert not (tmp_path / "out").exists()


def test_lora_weight_nan_and_refine_negative_frames_are_refused(tmp_path, capsys, no_model):
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"x")
    line = cli_error(capsys, "generate", *BASE, "--out", str(tmp_path / "o"), "--lora", f"{lora}:nan")
    assert "lora =" in line and "finite" in line
    gif = tmp_path / "in.gif"
    Image.new("RGB", (64, 64)).save(gif)
    line = cli_error(capsys, "refine", "--video", str(gif), "--prompt", "a cat", "--out", str(tmp_path / "r"),
                     "--frames", "-2")
    assert line.startswith("i4vgen: error: frames = -2")


def test_an_unwritable_out_fails_before_model_work(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("x")
    line = cli_error(capsys, "generate", *BASE, "--out", str(tmp_path / "file" / "out"))
    assert "out =" in line and "not writable" in line


def test_a_reused_out_holds_only_the_last_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["generate", *BASE, "--out", str(out), "--format", "webp,gif", "--save-latents"]) == 0
    assert {p.name for p in out.iterdir()} == {"notes.txt", "video.webp", "video.gif", "latents.safetensors",
                                               "candidates.png", "run.json"}
    assert main(["generate", *BASE, "--out", str(out), "--mode", "plain"]) == 0
    assert {p.name for p in out.iterdir()} == {"notes.txt", "video.gif", "run.json"}
    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "plain" and run["output"]["files"] == ["video.gif", "run.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.i4vgen-")]  # no staging folder left


def test_ctrl_c_writes_nothing_and_says_where_it_stopped(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["generate", *BASE, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    from i4vgen_ext.core import pipeline

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "ni_vsds", interrupt)
    code = main(["generate", *BASE, "--prompt", "a dog", "--out", str(out), "--seed", "9"])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip() == "i4vgen: interrupted during NI-VSDS, nothing written"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier run, whole and unchanged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.i4vgen-")]


def test_regeneration_strength_zero_with_latents(tmp_path):
    out = tmp_path / "out"
    assert main(["generate", *BASE, "--out", str(out), "--regen-strength", "0", "--save-latents"]) == 0
    from safetensors.torch import load_file

    latents = load_file(str(out / "latents.safetensors"))
    assert (latents["final"] == latents["nivsds"]).all()


def test_demo_candidates_are_labelled_and_an_anchor_image_is_summarised(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", *BASE, "--out", str(out)]) == 0
    sheet = Image.open(out / "candidates.png").convert("RGB")
    title = [sheet.getpixel((x, y)) for x in range(sheet.width) for y in range(2, 14)]
    assert any(r > 200 and g < 80 and b < 80 for r, g, b in title)  # the red demo-model label above the tiles
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["generate", *BASE, "--out", str(tmp_path / "b"), "--anchor-image", str(tmp_path / "a.png")]) == 0
    said = capsys.readouterr().out
    assert "anchor from your image" in said and "anchor -1" not in said

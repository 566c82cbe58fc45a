"""``i4vgen batch`` on the demo model: 6 samples (3 prompts x 2) in one process and under ``torchrun`` with two
processes, killed and resumed, bad prompt files, Ctrl-C, and the model and ranker loading once per process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from i4vgen_ext.standalone.cli import main
from tests.cli_helpers import cli_error

REPO = Path(__file__).resolve().parents[2]
SUITE = [
    {"prompt": "a cat"},
    {"prompt": "a dog / on a boat", "name": "dog on a boat", "steps": 3},  # a '/' in a prompt needs a name
    {"prompt": "the sea", "seed": 100, "negative_prompt": "blur"},
]
FILES = {f"{name}-{k}.mp4" for name in ("a cat", "dog on a boat", "the sea") for k in (0, 1)}
# Small runs: 2 frames, 2 candidates, 2 steps (the second line overrides steps).
SMALL = ("--samples-per-prompt", "2", "--seed", "7", "--ranker", "none", "--frames", "2", "--candidates", "2",
         "--steps", "2", "--quiet")


def write_suite(folder: Path, lines=SUITE) -> Path:
    path = folder / "suite.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def records(out: Path) -> list:
    return [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]


def videos(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".mp4"}


def subprocess_env(cache: Path) -> dict:
    return dict(os.environ, I4VGEN_CACHE=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def reference(demo_model_dir, tmp_path_factory):
    """The suite run uninterrupted in one process (this one)."""
    folder = tmp_path_factory.mktemp("reference")
    suite = write_suite(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))
        assert main(["batch", "--prompts", str(suite), "--out", str(folder / "out"), *SMALL]) == 0
    return folder / "out"


@pytest.fixture(autouse=True)
def _demo_cache(demo_model_dir, monkeypatch):
    monkeypatch.setenv("I4VGEN_CACHE", str(demo_model_dir.parent))


def test_one_process_writes_the_vbench_layout(reference):
    assert set(videos(reference)) == FILES
    assert sorted(p.name for p in reference.iterdir()) == sorted(FILES | {"batch.jsonl"})  # flat, nothing else
    lines = records(reference)
    assert sorted(r["file"] for r in lines) == sorted(FILES)
    by_file = {r["file"]: r for r in lines}
    # Seeds: base 7 + p * 2 + k; a line's own seed s: s + k.
    assert [by_file[f"a cat-{k}.mp4"]["seed"] for k in (0, 1)] == [7, 8]
    assert [by_file[f"dog on a boat-{k}.mp4"]["seed"] for k in (0, 1)] == [9, 10]
    assert [by_file[f"the sea-{k}.mp4"]["seed"] for k in (0, 1)] == [100, 101]
    dog = by_file["dog on a boat-1.mp4"]
    assert dog["prompt"] == "a dog / on a boat" and dog["line"] == 2 and dog["sample"] == 1
    assert dog["settings"]["steps"] == 3 and dog["unet_calls"]["regeneration"] == 3
    assert by_file["the sea-0.mp4"]["settings"]["negative_prompt"] == "blur"
    for record in lines:
        assert record["bytes"] == (reference / record["file"]).stat().st_size
        assert record["anchor_index"] == 0 and record["unet_calls"]["total"] > 0 and record["seconds"] > 0
        assert record["process"] == {"index": 0, "count": 1, "model_loads": 1, "ranker_loads": 0}
    import imageio.v3 as iio

    assert iio.imread(reference / "a cat-0.mp4").shape[0] == 2


def test_a_sample_is_the_video_generate_writes_with_its_seed(reference, tmp_path):
    out = tmp_path / "one"
    assert main(["generate", "--prompt", "a dog / on a boat", "--seed", "10", "--ranker", "none", "--frames", "2",
                 "--candidates", "2", "--steps", "3", "--format", "mp4", "--out", str(out), "--quiet"]) == 0
    assert (out / "video.mp4").read_bytes() == (reference / "dog on a boat-1.mp4").read_bytes()


def test_nothing_of_one_sample_leaks_into_the_next(tmp_path):
    # EVS with inversion and SFI hooks the shared model during the first sample; the second must not see it.
    suite = write_suite(tmp_path, [{"prompt": "a cat", "mode": "plain+evs", "evs_inversion": True, "evs_sfi": True,
                                    "steps": 4}, {"prompt": "a dog"}])
    out = tmp_path / "out"
    args = ("--seed", "3", "--ranker", "none", "--frames", "2", "--candidates", "2", "--steps", "2", "--quiet")
    assert main(["batch", "--prompts", str(suite), "--out", str(out), *args]) == 0
    assert records(out)[0]["unet_calls"]["evs_inversion"] > 0
    alone = tmp_path / "alone"  # seed 3 + line 1 * 1 sample + 0
    assert main(["generate", "--prompt", "a dog", "--seed", "4", "--format", "mp4", "--out", str(alone),
                 *args[2:]]) == 0
    assert (alone / "video.mp4").read_bytes() == (out / "a dog-0.mp4").read_bytes()


def test_two_processes_run_each_sample_once_and_byte_identical(reference, demo_model_dir, tmp_path):
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "i4vgen_ext", "batch", "--prompts", str(suite), "--out", str(out), *SMALL]
    done = subprocess.run(command, env=subprocess_env(demo_model_dir.parent), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = records(out)
    assert sorted(r["file"] for r in lines) == sorted(FILES)  # each sample exactly once
    assert {r["process"]["index"] for r in lines} == {0, 1} and {r["process"]["count"] for r in lines} == {2}
    assert all(r["process"]["model_loads"] == 1 for r in lines)  # once per process, counted where it loads
    assert videos(out) == videos(reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES | {"batch.jsonl"})


def test_killed_mid_suite_and_resumed_ends_with_the_same_files(reference, demo_model_dir, tmp_path):
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "i4vgen_ext", "batch", "--prompts", str(suite), "--out", str(out), *SMALL]
    process = subprocess.Popen(command, env=subprocess_env(demo_model_dir.parent), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "batch.jsonl").exists() and len((out / "batch.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # no handler, no cleanup: wherever it is now
    finally:
        process.kill()
        stderr = process.communicate()[1].decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    killed = records(out)
    assert 2 <= len(killed) < 6, "the kill must land mid-suite"
    assert main(["batch", "--prompts", str(suite), "--out", str(out), *SMALL]) == 0
    assert videos(out) == videos(reference)
    assert sorted(r["file"] for r in records(out)) == sorted(FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES | {"batch.jsonl"})
    # The resumed run kept the samples that were complete (their lines unchanged) and ran only the rest.
    assert records(out)[:len(killed)] == killed


def test_half_written_and_stale_samples_are_redone(reference, tmp_path, monkeypatch):
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    kept = [r for r in records(reference) if r["file"] not in ("a cat-1.mp4", "the sea-0.mp4")]
    # A video whose line never came (killed between the rename and the append), holding another sample's bytes;
    # a truncated video with its line; a work folder with a half-written video; a half-written last line.
    (out / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept)
                                     + json.dumps(records(reference)[-1])[:50])
    (out / "a cat-1.mp4").write_bytes((reference / "a cat-0.mp4").read_bytes())
    with open(out / "dog on a boat-0.mp4", "r+b") as video:
        video.truncate(100)
    (out / ".i4vgen-batch-work" / "the sea-0.mp4" / ".x.i4vgen-1").mkdir(parents=True)
    (out / ".i4vgen-batch-work" / "the sea-0.mp4" / ".x.i4vgen-1" / "video.mp4").write_bytes(b"half")

    import i4vgen_ext.standalone.generate as generate_module

    runs = []
    real_generate = generate_module.generate
    monkeypatch.setattr("i4vgen_ext.standalone.batch.generate",
                        lambda job, *a, **k: runs.append(job.settings.seed) or real_generate(job, *a, **k))
    assert main(["batch", "--prompts", str(suite), "--out", str(out), *SMALL]) == 0
    assert sorted(runs) == [8, 9, 100]  # a cat-1, dog on a boat-0, the sea-0: nothing else ran
    assert videos(out) == videos(reference)
    assert sorted(r["file"] for r in records(out)) == sorted(FILES)
    assert not (out / ".i4vgen-batch-work").exists()

    # Complete: a rerun loads nothing. Changed settings: the samples they change are redone.
    real_load = generate_module._load_backbone
    monkeypatch.setattr(generate_module, "_load_backbone", lambda *a: pytest.fail("model loaded, nothing to do"))
    runs.clear()
    assert main(["batch", "--prompts", str(suite), "--out", str(out), *SMALL]) == 0 and runs == []
    monkeypatch.setattr(generate_module, "_load_backbone", real_load)
    changed = write_suite(tmp_path, SUITE[:2] + [dict(SUITE[2], negative_prompt="fog")])
    assert main(["batch", "--prompts", str(changed), "--out", str(out), *SMALL]) == 0
    assert videos(out)["a cat-0.mp4"] == videos(reference)["a cat-0.mp4"]
    assert videos(out)["the sea-0.mp4"] != videos(reference)["the sea-0.mp4"]
    assert [r["settings"]["negative_prompt"] for r in records(out) if r["name"] == "the sea"] == ["fog", "fog"]


@pytest.mark.parametrize("lines, message", [
    (["a cat", "", "a dog"], "line 2: prompt = '' is not allowed"),
    (["a cat", "a dog/cat"], "line 2: prompt = 'a dog/cat' is not allowed: expected a file name"),
    (["a cat", ".hidden"], "line 2: prompt = '.hidden'"),
    (["a cat", "a dog", "a cat"], "line 3: name 'a cat' is line 1's too"),
    (['{"prompt": "a cat"}', '{"prompt": "a dog", "colour": "red"}'], "line 2: colour = 'red' is not allowed"),
    (['{"prompt": "a cat", "steps": 0}'], "line 1: steps = 0 is not allowed: expected an integer in [1, 999]"),
    (['{"prompt": "a cat"}', '{"prompt": "a dog", "ranker": "clip"}'], "line 2: ranker = 'clip'"),
    (['{"prompt": "a cat", "seed": -1}'], "line 1: seed = -1 is not allowed"),
    (['{"prompt": "a cat"}', '["a dog"]'], "line 2: not a JSON object"),
    (['{"prompt": "a cat"}', '{"prompt": "a dog", "mode": "plain", "anchor_image": "x.png"}'], "line 2: anchor_image"),
    (['{"prompt": "a cat", "evs_strength": 0}'],
     "line 1: evs_strength = 0.0 is not allowed: expected a number in (0, 1]"),
])
def test_bad_lines_stop_before_model_work(tmp_path, capsys, monkeypatch, lines, message):
    import i4vgen_ext.standalone.generate as generate_module

    monkeypatch.setattr(generate_module, "_load_backbone", lambda *a: pytest.fail("model loaded despite a bad line"))
    suffix = ".jsonl" if lines[0].startswith("{") else ".txt"
    suite = tmp_path / f"suite{suffix}"
    suite.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if "anchor_image" in message:
        from PIL import Image

        Image.new("RGB", (64, 64)).save(tmp_path / "x.png")  # exists (relative to the file): refused for plain
    error = cli_error(capsys, "batch", "--prompts", str(suite), "--out", str(tmp_path / "out"), *SMALL)
    assert f"{suite} {message}" in error, error
    assert not (tmp_path / "out").exists()


def test_bad_command_line_values_are_named(tmp_path, capsys):
    suite = tmp_path / "suite.txt"
    suite.write_text("a cat\n")
    base = ("batch", "--prompts", str(suite), "--out", str(tmp_path / "out"))
    assert "samples_per_prompt = 0" in cli_error(capsys, *base, "--samples-per-prompt", "0")
    assert "seed = -1" in cli_error(capsys, *base, "--seed", "-1")
    assert "fps = 0.0" in cli_error(capsys, *base, "--fps", "0")
    long = tmp_path / "long.txt"
    long.write_text("x" * 250 + "\n")
    assert "line 1: prompt = " in cli_error(capsys, "batch", "--prompts", str(long), "--out", str(tmp_path / "o"),
                                            "--samples-per-prompt", "5")
    assert "cannot read it" in cli_error(capsys, "batch", "--prompts", str(tmp_path / "none.txt"), "--out", "o")


class StubRanker:
    name = "stub"

    def __init__(self, interrupt_on_call=None):
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call

    def score(self, prompt, images):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this sample runs
        return [float(i == 1) for i in range(len(images))]

    def unload(self):
        pytest.fail("a batch keeps its ranker loaded")


def test_ranker_and_model_load_once_and_ctrl_c_stops_after_the_sample(tmp_path, monkeypatch, capsys):
    from i4vgen_ext.rankers import registry

    loads = []
    stub = StubRanker(interrupt_on_call=3)
    monkeypatch.setitem(registry._LOADERS, "imagereward", lambda path=None, **kw: loads.append(1) or stub)
    monkeypatch.setattr(registry, "_cache", {})  # the stub stays out of other tests' ranker cache
    handler = signal.getsignal(signal.SIGINT)
    suite = tmp_path / "suite.txt"
    suite.write_text("a cat\na dog\nthe sea\n")
    args = ["batch", "--prompts", str(suite), "--out", str(tmp_path / "out"), "--samples-per-prompt", "2",
            "--frames", "2", "--candidates", "2", "--steps", "2", "--quiet"]
    assert main(args) == 130  # stopped after the third sample, which was written whole
    assert "rerun the same command to resume" in capsys.readouterr().err
    first = records(tmp_path / "out")
    assert [r["file"] for r in first] == ["a cat-0.mp4", "a cat-1.mp4", "a dog-0.mp4"]
    assert set(videos(tmp_path / "out")) == {r["file"] for r in first}
    assert not (tmp_path / "out" / ".i4vgen-batch-work").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # batch's handler is gone again
    assert main(args) == 0
    lines = records(tmp_path / "out")
    # One load per batch run (the second run's comes from the process's ranker cache); 6 samples ranked.
    assert len(lines) == 6 and len(loads) == 1 and stub.calls == 6
    assert all(r["anchor_index"] == 1 and r["scores"] == [0.0, 1.0] and r["ranker"] == "stub" for r in lines)
    assert all(r["process"]["model_loads"] == 1 and r["process"]["ranker_loads"] == 1 for r in lines)

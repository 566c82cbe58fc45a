"""What a WebUI request (API ``alwayson_scripts.I4VGen.args`` or the panel) may name on the server: a ranker folder by
its name inside ``<models>/ImageReward`` only, and an anchor image as base64 only. Refusals come before sampling
and read the same whether or not the named path exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from i4vgen_ext.core.settings import SettingsError
from i4vgen_ext.webui import job as i4vgen_job
from i4vgen_ext.webui import ranking
from i4vgen_ext.webui.anchor import decode_anchor_arg
from i4vgen_ext.webui.args import parse_script_args
from i4vgen_ext.webui.ranking import RANKER_PATH_ALLOWED, RankerCache, resolve_ranker_folder

from .conftest import ad_args, b64, gradient, make_p, run, ui_args


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A models folder with ranker folders, and things outside it that exist (a file, a folder, links to them)."""
    from modules import shared

    models = tmp_path / "models"
    root = models / "ImageReward"
    (root / "PickScore_v1").mkdir(parents=True)
    (root / "inside-link-target").mkdir()
    outside = tmp_path / "outside"
    (outside / "ranker").mkdir(parents=True)
    (outside / "secret.pt").write_bytes(b"not for requests")
    (outside / "ranker" / "pytorch_model.bin").write_bytes(b"pickle")
    os.symlink(outside / "ranker", root / "escape")  # a link out of the ranker folder, to a folder that exists
    os.symlink(outside / "missing", root / "dangling-escape")  # ... and to one that does not
    os.symlink(root / "inside-link-target", root / "inside-link")
    monkeypatch.setattr(shared, "models_path", str(models))
    monkeypatch.setitem(shared.opts.data, "i4vgen_reward_model_dir", "")
    return dict(models=models, root=root, outside=outside)


def _expected(value) -> str:
    return f"ranker_path = {value!r} is not allowed: expected {RANKER_PATH_ALLOWED}"


def _refusal(value, models_dir) -> str:
    with pytest.raises(SettingsError) as error:
        resolve_ranker_folder(value, models_dir)
    assert error.value.name == "ranker_path" and error.value.allowed == RANKER_PATH_ALLOWED
    return str(error.value)


# Pairs that differ only in whether the named thing exists: the messages are the same but for the echoed value.
def _pairs(server):
    outside = server["outside"]
    return [
        (str(outside / "secret.pt"), str(outside / "no-such.pt")),  # absolute file
        (str(outside / "ranker"), str(outside / "no-such-dir")),  # absolute folder
        ("../../outside/secret.pt", "../../outside/no-such.pt"),  # relative, climbing out
        ("PickScore_v1/../../../outside/ranker", "PickScore_v1/../../../outside/none"),
        ("escape", "dangling-escape"),  # links leading out
        ("~/secret.pt", "~/no-such.pt"),
        ("file:" + str(outside / "secret.pt"), "file:" + str(outside / "no-such.pt")),
    ]


def test_a_request_may_only_name_a_folder_inside_the_ranker_folder(server) -> None:
    models, root = str(server["models"]), server["root"]
    assert resolve_ranker_folder("PickScore_v1", models) == os.path.realpath(root / "PickScore_v1")
    assert resolve_ranker_folder(" PickScore_v1 ", models) == os.path.realpath(root / "PickScore_v1")
    assert resolve_ranker_folder("not-there-yet", models) == os.path.realpath(root / "not-there-yet")
    assert resolve_ranker_folder("inside-link", models) == os.path.realpath(root / "inside-link-target")
    assert resolve_ranker_folder("", models) is None and resolve_ranker_folder(None, models) is None
    for existing, missing in _pairs(server):
        assert _refusal(existing, models) == _expected(existing)
        assert _refusal(missing, models) == _expected(missing)
    for value in (".", "..", "/", "a/b", "a\\b", "C:\\models", "C:models", "\\\\server\\share", "x\x00y", ".hidden",
                  "name.", "a" * 300):
        assert _refusal(value, models).startswith("ranker_path = ")
    assert _refusal("PickScore_v1", None) == _expected("PickScore_v1")  # no models folder known: nothing is allowed


def test_the_settings_folder_replaces_the_models_folder(server, tmp_path: Path) -> None:
    other = tmp_path / "owner-models"
    (other / "ImageReward" / "mine").mkdir(parents=True)
    assert resolve_ranker_folder("mine", str(other)) == os.path.realpath(other / "ImageReward" / "mine")
    assert _refusal("../../models/ImageReward/PickScore_v1", str(other)).startswith("ranker_path = ")


def test_a_path_in_the_api_or_the_panel_is_refused_before_sampling(host, stub, server) -> None:
    outside = server["outside"]
    messages = []
    for value in (str(outside / "secret.pt"), str(outside / "no-such.pt"), "escape", "dangling-escape"):
        for p in (make_p(host, i4vgen=[{"enable": True, "candidates": 2, "ranker_path": value}], api=True,
                         ad=ad_args(batch_size=8)),
                  make_p(host, i4vgen=ui_args(host, ranker_path=value), ad=ad_args(batch_size=8))):
            with pytest.raises(i4vgen_job.I4VGenError) as error:
                run(p)
            assert str(error.value) == f"I4VGen: bad argument 'ranker_path': {_expected(value)}"
            messages.append(str(error.value).replace(repr(value), "<value>"))
            assert host.model.unet_log == [] and "sample" not in vars(p)
    assert len(set(messages)) == 1
    assert stub.loads == 0  # no ranker was loaded, no file was opened


def test_a_folder_name_reaches_the_loader_as_the_folder_inside_the_ranker_folder(host, server, monkeypatch) -> None:
    from i4vgen_ext.rankers.base import NoneRanker

    seen = []

    def loader(name, *, path, **kwargs):
        seen.append((name, path, kwargs["webui_models_dir"]))
        return NoneRanker(), name

    monkeypatch.setattr(ranking, "default_loader", loader)
    p = make_p(host, i4vgen=[{"enable": True, "candidates": 2, "ranker": "pickscore", "ranker_path": "PickScore_v1"}],
               api=True, ad=ad_args(batch_size=8))
    run(p)
    assert seen == [("pickscore", os.path.realpath(server["root"] / "PickScore_v1"), str(server["models"]))]
    assert '"ranker_path":"PickScore_v1"' in p.extra_generation_params["I4VGen"]  # the name, not the server path


def test_the_ranker_cache_resolves_the_name_itself(server, tmp_path: Path) -> None:
    """Defence in depth: a settings object that skipped ``prepare`` still cannot make the cache load a server path."""
    from i4vgen_ext.core.settings import I4VGenSettings

    calls = []
    cache = RankerCache(loader=lambda *a, **k: calls.append((a, k)) or (None, "x"))
    with pytest.raises(SettingsError):
        cache.get(I4VGenSettings(ranker_path=str(server["outside"] / "ranker")), device="cpu",
                  models_dir=str(server["models"]))
    assert calls == []
    cache.get(I4VGenSettings(ranker_path="PickScore_v1"), device="cpu", models_dir=str(server["models"]))
    assert calls[0][1]["path"] == os.path.realpath(server["root"] / "PickScore_v1")


def test_a_real_pickscore_folder_by_name_loads_its_safetensors(host, server, tmp_path: Path) -> None:
    """End to end with real files: the named folder's model loads; a pickled bin beside it is never unpickled."""
    import torch

    from tests.rankers.ranker_fixtures import write_clip_model, write_clip_processor

    folder = server["root"] / "PickScore_v1"
    write_clip_model(folder)
    write_clip_processor(folder)
    marker = tmp_path / "code-ran"

    class Marker:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"x": Marker()}, folder / "pytorch_model.bin")
    from i4vgen_ext.core.settings import I4VGenSettings

    cache = RankerCache()
    ranker, label = cache.get(I4VGenSettings(ranker="pickscore", ranker_path="PickScore_v1"), device="cpu",
                              models_dir=str(server["models"]))
    try:
        assert label == "pickscore" and len(ranker.score("a cat", [gradient(32, 32)])) == 1
        assert not marker.exists()
    finally:
        cache.release()


# anchor_image: base64 only ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    "/etc/passwd", "/etc/hostname", "C:\\Windows\\win.ini", "C:/Windows/win.ini", "file:///etc/passwd",
    "file:/etc/passwd", "./x.png", "../x.png", "~/x.png", "\\\\server\\share\\x.png", "http://example.com/x.png",
    "x\\y.png",
])
def test_an_anchor_image_that_reads_as_a_path_or_url_is_refused(value) -> None:
    with pytest.raises(SettingsError) as error:
        parse_script_args([{"enable": True, "anchor_image": value}])
    assert error.value.name == "anchor_image"
    assert "file paths and URLs are refused" in str(error.value) and "base64" in str(error.value)
    assert value not in str(error.value)


def test_the_path_of_a_real_image_on_the_server_is_not_read(tmp_path: Path, monkeypatch) -> None:
    picture = tmp_path / "anchor.png"
    gradient(16, 16).save(picture)
    import builtins

    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(file) or real_open(file, *a, **k))
    for value in (str(picture), "file://" + str(picture), "./" + picture.name):
        with pytest.raises(SettingsError, match="file paths and URLs are refused"):
            decode_anchor_arg(value)
    assert str(picture) not in [str(f) for f in opened]
    assert decode_anchor_arg(b64(gradient(16, 16))).size == (16, 16)  # base64 still works
    jpeg = b64(gradient(16, 16), "JPEG")
    assert jpeg.startswith("/9j/") and decode_anchor_arg(jpeg).size == (16, 16)  # a leading "/" is not a path

"""The pack loads as ComfyUI loads a custom node (``nodes.py:load_custom_node``: the clone's ``__init__.py`` under
its full path as module name), registers ``models/ImageReward`` with ``folder_paths``, and its ranker loader names a
ranker by kind and a listed file name, never a path."""
from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from i4vgen_ext.comfy import ranking
from i4vgen_ext.core.settings import SettingsError

from .conftest import REPO


@pytest.fixture
def comfy_base(tmp_path):
    import folder_paths

    saved = (folder_paths.base_path, folder_paths.models_dir, dict(folder_paths.folder_names_and_paths))
    folder_paths.set_base(str(tmp_path))
    folder_paths.folder_names_and_paths.pop(ranking.FOLDER, None)
    yield tmp_path
    folder_paths.base_path, folder_paths.models_dir = saved[0], saved[1]
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved[2])


def load_like_comfyui(folder):
    """``load_custom_node`` for a folder: ``sys_module_name = module_path.replace(".", "_x_")``."""
    name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, str(folder / "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_the_clone_loads_as_a_custom_node_and_registers_the_ranker_folder(comfy_base, tmp_path):
    import folder_paths

    clone = tmp_path / "custom_nodes" / "ComfyUI-I4VGen.git-main"
    clone.mkdir(parents=True)
    shutil.copy(REPO / "__init__.py", clone / "__init__.py")
    shutil.copytree(REPO / "i4vgen_ext", clone / "i4vgen_ext", ignore=shutil.ignore_patterns("__pycache__"))
    module = load_like_comfyui(clone)
    assert set(module.NODE_CLASS_MAPPINGS) == {"I4VGenSamplerAnimateDiff", "I4VGenRankerLoader"}
    assert module.NODE_DISPLAY_NAME_MAPPINGS["I4VGenSamplerAnimateDiff"] == "I4VGen Sampler (AnimateDiff)"
    for node in module.NODE_CLASS_MAPPINGS.values():
        assert node.CATEGORY == "I4VGen" and callable(getattr(node, node.FUNCTION))
    assert folder_paths.get_folder_paths(ranking.FOLDER) == [str(comfy_base / "models" / "ImageReward")]


def test_the_loader_lists_the_files_comfyui_finds_and_refuses_any_other_name(comfy_base):
    from i4vgen_ext.comfy.nodes import I4VGenRankerLoader, setup

    setup()
    folder = comfy_base / "models" / "ImageReward"
    (folder / "clip-l").mkdir(parents=True)
    (folder / "ImageReward.pt").write_bytes(b"")
    (folder / "clip-l" / "model.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("not a weights file")
    choices = I4VGenRankerLoader.INPUT_TYPES()["required"]["ranker_file"][0]
    assert choices == [ranking.AUTO, "ImageReward.pt", "clip-l/model.safetensors"]
    assert ranking.resolve("imagereward", "ImageReward.pt") == str(folder / "ImageReward.pt")
    assert ranking.resolve("clip", "clip-l/model.safetensors") == str(folder / "clip-l")
    for name in ("../ImageReward.pt", "/etc/passwd", "notes.txt", "missing.pt"):
        with pytest.raises(SettingsError) as error:
            ranking.resolve("imagereward", name)
        assert error.value.name == "ranker_file"


def test_loading_passes_the_listed_file_and_the_fallback_to_the_rankers_package(comfy_base):
    from i4vgen_ext.comfy.nodes import I4VGenRankerLoader, setup

    setup()
    folder = comfy_base / "models" / "ImageReward"
    folder.mkdir(parents=True)
    (folder / "ImageReward.pt").write_bytes(b"")
    seen = []

    def loader(kind, **kwargs):
        seen.append((kind, kwargs))
        return object(), kind

    choice = ranking.load("imagereward", "ImageReward.pt", "error", loader=loader)
    assert choice.ranker is not None and choice.label == "imagereward"
    assert seen[0][1]["path"] == str(folder / "ImageReward.pt") and seen[0][1]["offline"] is True
    assert seen[0][1]["webui_models_dir"] == str(comfy_base / "models")
    none = I4VGenRankerLoader().load("none", ranking.AUTO, "error")[0]
    assert none.ranker is None and none.label == "none"


def test_an_unloadable_ranker_falls_back_or_stops_as_the_setting_says(comfy_base, monkeypatch):
    from i4vgen_ext.rankers import RankerLoadError, unload_cached

    monkeypatch.setenv("HOME", str(comfy_base))
    monkeypatch.setenv("HF_HOME", str(comfy_base / "hf"))
    ranking.register_folder()
    unload_cached()
    choice = ranking.load("imagereward", ranking.AUTO, "none")
    assert choice.ranker is None and choice.label.startswith("none (fallback:")
    with pytest.raises(RankerLoadError):
        ranking.load("imagereward", ranking.AUTO, "error")


def test_install_py_does_nothing_outside_a1111(monkeypatch, capsys):
    """ComfyUI-Manager runs a node pack's install.py: with no A1111 ``launch`` module it installs nothing."""
    import builtins

    monkeypatch.syspath_prepend(str(REPO))
    sys.modules.pop("install", None)
    import install

    real_import = builtins.__import__

    def no_launch(name, *args, **kwargs):
        if name == "launch":
            raise ImportError("No module named 'launch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_launch)
    monkeypatch.setattr(install, "install", lambda *a, **k: pytest.fail("install.py tried to install"))
    install.main()
    assert "nothing to install" in capsys.readouterr().out

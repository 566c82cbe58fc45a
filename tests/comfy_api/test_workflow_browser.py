"""The UI-format example workflow (examples/i4vgen_animatediff.json) in ComfyUI's own frontend: headless Chromium
loads ComfyUI, the workflow is loaded onto the canvas (``app.loadGraphData``, what dropping the file does), and the
frontend's own conversion (``app.graphToPrompt``) gives the API-format example the live suite posts. With env
I4VGEN_SCREENSHOTS=DIR a picture of the loaded workflow is written there.

Headless Chromium from the system's packages (``/usr/bin/chromium``, or env I4VGEN_CHROMIUM), driven by Playwright's
Python API; skipped with a reason when either is missing."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import EXAMPLE, URL_ENV

UI_EXAMPLE = EXAMPLE.parent / "i4vgen_animatediff.json"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # no connection leaves the machine


def chromium_path() -> str:
    path = os.environ.get("I4VGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.skip("no Chromium: install Debian's chromium package or set I4VGEN_CHROMIUM")
    return path


def test_the_ui_example_loads_in_comfyui_and_is_the_api_example():
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"{URL_ENV} is not set: no live ComfyUI to test against")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python API is not installed")
    workflow = json.loads(UI_EXAMPLE.read_text())
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1900, "height": 1100})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url, timeout=180_000)
        page.wait_for_function("() => window.app && window.app.graph && window.app.loadGraphData", timeout=180_000)
        page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
        loaded = page.evaluate("() => window.app.graph._nodes.map(n => [n.id, n.type, n.widgets_values || "
                               "(n.widgets || []).map(w => w.value)])")
        prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        folder = os.environ.get("I4VGEN_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.keyboard.press("Escape")  # the first-run template dialog would cover the canvas
            page.evaluate("() => { window.app.canvas.ds.scale = 0.62; window.app.canvas.ds.offset = [10, 10]; "
                          "window.app.graph.setDirtyCanvas(true, true); }")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(Path(folder) / "comfyui-workflow.png"))
        browser.close()
    api = json.loads(EXAMPLE.read_text())
    assert sorted(str(n[0]) for n in loaded) == sorted(api)
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
    for key, node in api.items():
        for name, value in node["inputs"].items():
            got = prompt[key]["inputs"].get(name)
            if isinstance(value, list):
                assert [str(got[0]), got[1]] == value, (key, name, got)
            elif node["class_type"] != "CheckpointLoaderSimple" and name not in ("model_name", "ranker_file"):
                assert got == value, (key, name, got, value)  # file names the server lacks may be replaced
    assert not [e for e in errors if "i4vgen" in e.lower()], errors

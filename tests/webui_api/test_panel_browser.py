"""The I4VGen panel in a real browser against the live WebUI (env I4VGEN_WEBUI_URL): an I4VGen infotext pasted into
the prompt box restores the panel, a generation with AnimateDiff and I4VGen ticked fills the candidate gallery, and
clicking a candidate sets the manual anchor index to it.

Headless Chromium from the system's packages (``/usr/bin/chromium``, or env I4VGEN_CHROMIUM), driven by Playwright's
Python API; skipped with a reason when either is missing. With env I4VGEN_SCREENSHOTS=DIR the panel's screenshots
are written there (the README's pictures come from this test)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import CANDIDATES, FRAMES, SEED, SIZE, STEPS, URL_ENV

TAB = "txt2img"
PANEL = f"#script_{TAB}_i4vgen"  # A1111's Script.elem_id prefix for an AlwaysVisible script: script_<tab>_<title>
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # no connection leaves the machine
NIVSDS_FRACTION = 0.5  # not the preset's 0.6: the paste must set it
GENERATION_SECONDS = 900


def chromium_path() -> str:
    path = os.environ.get("I4VGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.skip("no Chromium: install Debian's chromium package or set I4VGEN_CHROMIUM")
    return path


def infotext() -> str:
    """An I4VGen job's parameters, as A1111 writes them (``infotext_utils.quote`` JSON-quotes the record)."""
    record = {"preset": "official", "candidates": CANDIDATES, "nivsds_fraction": NIVSDS_FRACTION, "ranker": "none",
              "return_candidates": True}
    params = {"Steps": STEPS, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7, "Seed": SEED,
              "Size": f"{SIZE}x{SIZE}", "I4VGen": json.dumps(json.dumps(record, separators=(",", ":")))}
    return "a red ball\n" + ", ".join(f"{key}: {value}" for key, value in params.items())


@pytest.fixture(scope="module")
def page():
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"{URL_ENV} is not set: no live WebUI to test against")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python API is not installed")
    executable = chromium_path()
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1600, "height": 1400})
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(url, timeout=180_000)
        tab.wait_for_selector(f"#{TAB}_prompt textarea", timeout=180_000)
        tab.wait_for_selector(f"{PANEL}_enable input", state="attached", timeout=60_000)
        tab.errors = errors
        yield tab
        browser.close()


def open_accordion(page, inner: str) -> None:
    """Open the gradio accordion that holds ``inner`` (a no-op when it is open already)."""
    accordion = page.locator(".gradio-accordion", has=page.locator(inner)).last
    if not page.locator(inner).first.is_visible():
        accordion.locator(".label-wrap").first.click()
    page.locator(inner).first.wait_for(state="visible", timeout=10_000)


def set_number(page, selector: str, value) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")  # gradio sends a number on blur


def screenshot(page, name: str) -> None:
    folder = os.environ.get("I4VGEN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.locator(f"{PANEL}_accordion").screenshot(path=str(Path(folder) / name))


def test_panel_renders_without_script_errors(page):
    open_accordion(page, f"{PANEL}_enable")
    assert page.locator(f"{PANEL}_enable input").is_visible()
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"


def test_pasted_infotext_restores_the_panel(page):
    page.locator(f"#{TAB}_prompt textarea").fill(infotext())
    page.locator(f"#{TAB}_tools #paste").click()
    page.wait_for_function(f"document.querySelector('{PANEL}_enable input').checked", timeout=30_000)
    open_accordion(page, f"{PANEL}_candidates")
    assert page.locator(f"{PANEL}_enable input").is_checked()
    assert page.locator(f"{PANEL}_candidates input[type=number]").input_value() == str(CANDIDATES)
    assert float(page.locator(f"{PANEL}_nivsds_fraction input[type=number]").input_value()) == NIVSDS_FRACTION
    assert page.locator(f"{PANEL}_ranker input").input_value() == "none"
    assert page.locator(f"{PANEL}_return_candidates input").is_checked()
    assert page.locator(f"#{TAB}_prompt textarea").input_value() == "a red ball"
    assert page.locator(f"#{TAB}_steps input[type=number]").input_value() == str(STEPS)
    screenshot(page, "panel-pasted.png")


def test_generation_fills_the_gallery_and_a_click_picks_the_anchor(page):
    open_accordion(page, f"#{TAB}-ad-enable")
    page.locator(f"#{TAB}-ad-enable input").check()
    set_number(page, f"#{TAB}-ad-video-length", FRAMES)
    set_number(page, f"#{TAB}-ad-batch-size", FRAMES)  # AnimateDiff's context size: = frames, or it renders 16
    page.locator(f"#{TAB}_generate").click()
    page.wait_for_function(
        f"(document.querySelector('#html_info_{TAB}') || {{}}).innerText?.includes('I4VGen')",
        timeout=GENERATION_SECONDS * 1000)
    assert "I4VGen" in page.locator(f"#html_info_{TAB}").first.inner_text()  # gradio's block and its content share the id
    open_accordion(page, f"#i4vgen_candidates_{TAB}")
    thumbnails = page.locator(f"#i4vgen_candidates_{TAB} button:has(img)")
    # i4vgen.js presses the gallery's refresh button after a job whose info carries I4VGen
    page.wait_for_function(
        f"document.querySelectorAll('#i4vgen_candidates_{TAB} button img').length >= {CANDIDATES}", timeout=60_000)
    assert thumbnails.count() == CANDIDATES
    thumbnails.nth(1).click()
    anchor = page.locator(f"{PANEL}_anchor_index input[type=number]")
    page.wait_for_function(
        f"document.querySelector('{PANEL}_anchor_index input[type=number]').value === '1'", timeout=10_000)
    assert anchor.input_value() == "1"
    screenshot(page, "panel-candidates.png")
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"

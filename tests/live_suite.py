"""What the live suites (tests/webui_api, tests/comfy_api) share: skipping without a server, the terminal summary of
what they measured, and the server's URL."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest


def skip_without_server(items: list, folder: Path, url_env: str, host: str) -> None:
    """Mark every test of ``folder`` skipped, with a one-line reason, when ``url_env`` is not set."""
    if os.environ.get(url_env):
        return
    skip = pytest.mark.skip(reason=f"{url_env} is not set: no live {host} to test against")
    for item in items:
        if folder in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def report_measured(terminalreporter: Any, host: str, measured: Dict[str, Any]) -> None:
    if measured:
        terminalreporter.section(f"I4VGen live {host}: measured")
        for key, value in measured.items():
            terminalreporter.write_line(f"{key}: {json.dumps(value, sort_keys=True)}")


def server_url(url_env: str, host: str) -> str:
    url = os.environ.get(url_env)
    if not url:
        pytest.skip(f"{url_env} is not set: no live {host} to test against")
    return url


def answer(client: Any, path: str, url_env: str, url: str) -> tuple:
    """``client.get(path)``, or the test run fails naming the server that does not answer."""
    try:
        return client.get(path)
    except OSError as error:
        pytest.fail(f"{url_env}={url} does not answer: {error}")


def live_hooks(folder: Path, url_env: str, host: str, measured: Dict[str, Any]) -> tuple:
    """A live suite's conftest hooks and its ``measured`` fixture:
    ``pytest_collection_modifyitems, pytest_terminal_summary, measured = live_hooks(...)``."""

    def pytest_collection_modifyitems(config, items):
        skip_without_server(items, folder, url_env, host)

    def pytest_terminal_summary(terminalreporter):
        report_measured(terminalreporter, host, measured)

    @pytest.fixture(scope="session", name="measured")
    def measured_fixture() -> Dict[str, Any]:
        return measured

    return pytest_collection_modifyitems, pytest_terminal_summary, measured_fixture

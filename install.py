"""Run by A1111 at start-up (``launch_utils.run_extensions_installers``) and after an install from the Extensions
tab, as a subprocess with the WebUI root on ``PYTHONPATH``.

Installs only what the WebUI's venv lacks, with the host's own ``launch.is_installed`` / ``launch.run_pip``. The
names and ranges come from pyproject.toml (``dependencies`` and the ``rank`` extra), the one place where versions
are written. A package that is already there is never upgraded or downgraded, whatever its version (the WebUI
pins transformers, gradio, numpy, Pillow, ...): each install runs under a pip constraints file that pins every
distribution already in the venv to its current version, so pip can add what is missing but can replace
nothing. torch is never installed from here (the WebUI chose its build)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Tuple

ROOT = Path(__file__).resolve().parent
NEVER_INSTALL = {"torch"}  # the WebUI chose its torch build (CUDA/ROCm/CPU); never pip it from here

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def _array(text: str, key: str) -> List[str]:
    """The quoted strings of ``key = [ ... ]`` in a small TOML file (tomllib is Python 3.11+ only; the WebUI
    runs 3.10)."""
    match = re.search(rf"^\s*{re.escape(key)}\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> List[str]:
    text = pyproject.read_text(encoding="utf-8")
    deps = _array(text, "dependencies")
    extras = text.split("[project.optional-dependencies]", 1)[1] if "[project.optional-dependencies]" in text else ""
    return deps + _array(extras, "rank")


def split(requirement: str) -> Tuple[str, str]:
    """("name", "version spec") of a PEP 508 line (extras and markers dropped)."""
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise ValueError(f"cannot read requirement {requirement!r}")
    return match.group(1), match.group(3).strip()


def missing(reqs: Iterable[str], is_installed: Callable[[str], bool]) -> List[Tuple[str, str]]:
    out = []
    for requirement in reqs:
        name, spec = split(requirement)
        if name.lower() in NEVER_INSTALL or is_installed(name):
            continue
        out.append((name, spec))
    return out


def installed_pins() -> List[str]:
    """``name==version`` for every distribution in this interpreter's environment."""
    from importlib import metadata

    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name and dist.version:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def install(run_pip: Callable[..., object], is_installed: Callable[[str], bool], reqs: Iterable[str],
            pins: Callable[[], List[str]] = installed_pins) -> List[str]:
    todo = missing(reqs, is_installed)
    if not todo:
        return []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="i4vgen-install-") as folder:
        constraints = Path(folder) / "host-constraints.txt"
        constraints.write_text("\n".join(pins()) + "\n", encoding="utf-8")
        done = []
        for name, spec in todo:
            target = f"{name}{spec}"
            run_pip(f'install "{target}" -c "{constraints}"', desc=f"I4VGen requirement: {target}")
            done.append(target)
    return done


def main() -> None:
    try:
        import launch  # the WebUI's launch.py (re-exports modules/launch_utils.py)
    except ImportError:  # run outside A1111 (ComfyUI-Manager runs a node pack's install.py): ComfyUI has it all
        print("[I4VGen] not inside AUTOMATIC1111: nothing to install (ComfyUI's environment has what I4VGen needs)")
        return

    try:
        install(launch.run_pip, launch.is_installed, requirements())
    except Exception as error:  # a failed optional install must not stop the WebUI from starting
        print(f"[I4VGen] could not install requirements: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()

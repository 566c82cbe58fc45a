"""Every error class of the package, and what the CLI's exit status and the WebUI's message derive from.

A leaf module: it imports nothing of the package, so the core, the rankers and every adapter can raise these.
Each ``I4VGenError`` is a fault the user can act on: its message names the setting or file and says what to do.
The CLI prints ``i4vgen: <label>: <message>`` and exits with ``exit_code``; the WebUI shows the message as the
job's error; ComfyUI shows it as the node's error."""
from __future__ import annotations

from typing import Any, Sequence


class I4VGenError(Exception):
    """A fault the user can act on (the base of every error below but ``HostUnavailable``)."""

    exit_code = 2
    label = "error"


class SettingsError(I4VGenError, ValueError):
    """A setting is out of range. The message names the setting, the value and what is allowed."""

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name} = {value!r} is not allowed: expected {allowed}")


class Interrupted(I4VGenError):
    """Ctrl-C during a job; names the stage it stopped in. Nothing was written."""

    exit_code = 130
    label = ""

    def __init__(self, stage: str):
        self.stage = stage
        super().__init__(f"interrupted during {stage}, nothing written")


# Files the user named ------------------------------------------------------------------------------------------
class ModelFileError(I4VGenError, ValueError):
    """A model, motion-module or checkpoint file that cannot be read or is not what it was passed as."""


class LoraFileError(ModelFileError):
    """A LoRA file that cannot be read or does not fit the model."""


class UntrustedPickleError(ModelFileError, RuntimeError):
    """A pickled checkpoint that holds more than tensors, refused because loading it can run arbitrary code."""


class UnsupportedCheckpointError(I4VGenError, ValueError):
    """A checkpoint this backbone cannot run (not SD1.5-family, or not AnimateDiff SD1.5 motion modules)."""


class ImageModeUnsupported(I4VGenError, ValueError):
    """I2VGen-XL has no single-image mode, so I4VGen's candidate stage cannot run on it."""


class MissingDependencyError(I4VGenError, ImportError, ValueError):
    """A package the standalone backbone needs is not installed (a core-only install)."""


class PromptFileError(I4VGenError, ValueError):
    """A line of an ``i4vgen batch`` prompt file that cannot run; the message names the file and the line."""


class RankerLoadError(I4VGenError, RuntimeError):
    """A ranker could not load. Says which ranker, why, where its files were looked for and how to get them.

    ``reason`` is short enough for the infotext label ``none (fallback: <reason>)``."""

    def __init__(self, ranker: str, reason: str, searched: Sequence[str] = (), hint: str = "", detail: str = ""):
        self.ranker, self.reason, self.searched, self.hint, self.detail = ranker, reason, list(searched), hint, detail
        lines = [f"ranker '{ranker}' could not load: {reason}"]
        if detail:
            lines.append(detail)
        if self.searched:
            lines.append("searched:")
            lines.extend(f"  - {place}" for place in self.searched)
        if hint:
            lines.append(f"how to get the files: {hint}")
        super().__init__("\n".join(lines))


# Inside a host -------------------------------------------------------------------------------------------------
class JobError(I4VGenError, RuntimeError):
    """A host job that stopped with a message for the user (a ranker that failed to load, ...)."""


class Refusal(JobError):
    """A host job I4VGen will not run, raised where the reason is found; the adapter turns it into the job's error
    in one place (for A1111: ``webui.refusals.install_refusal``)."""


class HostUnavailable(ImportError):
    """A host module is not importable: the host adapter's code runs only inside its host."""


def cli_line(error: I4VGenError) -> str:
    """The CLI's one line for ``error`` (without the program name)."""
    return f"{error.label}: {error}" if error.label else str(error)

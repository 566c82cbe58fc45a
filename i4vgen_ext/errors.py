"""Error classes for files the user named that cannot be used (no logic here, nothing imported).

Each is a ``ValueError``, so the CLI prints it as one line (``i4vgen: error: ...``, exit status 2); each message
names the file (or setting) and says what to do."""
from __future__ import annotations


class ModelFileError(ValueError):
    """A model, motion-module or checkpoint file that cannot be read or is not what it was passed as."""


class LoraFileError(ModelFileError):
    """A LoRA file that cannot be read or does not fit the model."""


class MissingDependencyError(ImportError, ValueError):
    """A package the standalone backbone needs is not installed (a core-only install)."""


class PromptFileError(ValueError):
    """A line of an ``i4vgen batch`` prompt file that cannot run; the message names the file and the line."""

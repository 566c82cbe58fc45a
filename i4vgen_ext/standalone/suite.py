"""The prompt suite of ``i4vgen batch``: the prompt file read and checked line by line, and each line's samples with
their seeds and file names (docs/batch.md).

- Formats: a file whose name ends in ``.jsonl`` holds one JSON object a line (``prompt``; optional
  ``negative_prompt``, ``seed``, ``name`` and any generate setting but the ranker's); any other file one prompt a
  line. Surrounding spaces of a prompt are dropped; an empty line is an error, as every bad line is.
- Seeds: sample k of the prompt on the file's p-th line (both from 0) gets ``(seed + k) mod 2**32`` where the line
  names a seed, else ``(base_seed + p * samples_per_prompt + k) mod 2**32``: nothing else enters, neither the
  process that runs it nor whether the suite was resumed.
- Names: ``{name}-{k}.{format}`` (VBench's ``$prompt-$index.mp4``), ``name`` being the line's ``name`` or else its
  prompt, exactly: a name a file cannot carry (a ``/``, a control character, a leading dot, too long) is refused,
  never changed, since VBench finds a video by its prompt's exact text."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence

from ..core.settings import FIELDS, SEED_MAX, SettingsError, coerce
from ..errors import PromptFileError
from .generate import GenerateJob, check_generate_job

# Loaded once per process from the command line's values, so no line may change them.
PROCESS_WIDE = ("ranker", "ranker_path", "ranker_fallback")
LINE_SETTINGS = tuple(f.name for f in FIELDS if f.group in ("generation", "method", "mode", "anchor", "evs")
                      and f.name not in PROCESS_WIDE)
LINE_KEYS = ("name",) + LINE_SETTINGS
NAME_MAX_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems


@dataclass(frozen=True)
class Sample:
    line: int  # 1-based line of the prompt file
    prompt_index: int  # 0-based
    index: int  # k: the sample of this prompt, 0-based
    name: str
    job: GenerateJob  # its settings carry the sample's seed

    @property
    def seed(self) -> int:
        return self.job.settings.seed

    @property
    def prompt(self) -> str:
        return self.job.settings.prompt

    def file_name(self, fmt: str) -> str:
        return f"{self.name}-{self.index}.{fmt}"


def sample_seed(base_seed: int, prompt_index: int, samples_per_prompt: int, index: int) -> int:
    return (base_seed + prompt_index * samples_per_prompt + index) % (SEED_MAX + 1)


def read_suite(path: Path, *, samples_per_prompt: int, base_seed: int, fmt: str,
               make_job: Callable[[Dict[str, Any]], GenerateJob]) -> List[Sample]:
    """Every sample of the file, in file order (a line's samples together), or the ``PromptFileError`` of its first
    bad line. ``make_job(values)``: the generate job of the command line's settings with ``values`` (a line's
    prompt and settings) over them; it raises ``SettingsError`` for a bad value. Nothing here loads a model."""
    path = Path(path)
    lines = _lines(path)
    jsonl = path.name.lower().endswith(".jsonl")
    samples: List[Sample] = []
    seen: Dict[str, int] = {}
    for prompt_index, (number, text) in enumerate(lines):
        try:
            values = _json_line(text, path) if jsonl else {"prompt": text.strip()}
            line_seed = values.pop("seed", None)
            name = values.pop("name", None)
            prompt = values.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise SettingsError("prompt", prompt, "a non-empty text")
            values["prompt"] = prompt.strip()
            name = _check_name(values["prompt"] if name is None else name, samples_per_prompt, fmt,
                               named=name is not None)
            if name in seen:
                raise PromptFileError(f"{path} line {number}: name {name!r} is line {seen[name]}'s too: its files "
                                      "would overwrite those (give one of them another JSONL `name`)")
            seen[name] = number
            if line_seed is not None:
                line_seed = coerce("seed", line_seed)
                if line_seed < 0:
                    raise SettingsError("seed", line_seed, f"an integer in [0, {SEED_MAX}] (a batch's seeds are fixed)")
            if "anchor_image" in values and values["anchor_image"] is not None:
                values["anchor_image"] = _anchor_path(values["anchor_image"], path)
            job = make_job(values)
            check_generate_job(job)
        except PromptFileError:
            raise
        except (SettingsError, ValueError, OSError) as error:
            raise PromptFileError(f"{path} line {number}: {error}") from None
        for k in range(samples_per_prompt):
            seed = (line_seed + k) % (SEED_MAX + 1) if line_seed is not None else \
                sample_seed(base_seed, prompt_index, samples_per_prompt, k)
            sample_job = dataclasses.replace(job, settings=job.settings.replace(seed=seed))
            samples.append(Sample(line=number, prompt_index=prompt_index, index=k, name=name, job=sample_job))
    return samples


def _lines(path: Path) -> Sequence[tuple]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PromptFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise PromptFileError(f"prompts = {str(path)!r}: cannot read it ({error.strerror or error})") from None
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()  # the file's final newline ends the last line; it starts none
    if not rows:
        raise PromptFileError(f"{path}: no prompts (one prompt a line, or one JSON object a line in a .jsonl file)")
    return [(n, row.rstrip("\r")) for n, row in enumerate(rows, start=1)]


def _json_line(text: str, path: Path) -> Dict[str, Any]:
    if not text.strip():
        raise SettingsError("prompt", "", "a non-empty text (this line is empty)")
    try:
        values = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not a JSON object ({error})") from None
    if not isinstance(values, Mapping):
        raise ValueError(f"not a JSON object: {text.strip()[:60]!r}")
    for key in values:
        if key in PROCESS_WIDE:
            raise SettingsError(key, values[key], "no value per line: the ranker loads once per process; set "
                                f"--{key.replace('_', '-')} on the command line")
        if key not in LINE_KEYS:
            raise SettingsError(key, values[key], "a known key: " + ", ".join(LINE_KEYS))
    return dict(values)


def _check_name(name: Any, samples_per_prompt: int, fmt: str, *, named: bool) -> str:
    """The name as it is, or the ``SettingsError`` saying why no file can carry it."""
    key = "name" if named else "prompt"
    hint = "" if named else " (in a .jsonl file, give the line a `name` for its files)"
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(key, name, "a non-empty text")
    if any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise SettingsError(key, name, f"a file name: no '/', '\\\\' or control characters{hint}")
    if name.startswith("."):
        raise SettingsError(key, name, f"a file name that does not start with '.' (a hidden file){hint}")
    longest = f"{name}-{samples_per_prompt - 1}.{fmt}"
    if len(longest.encode("utf-8")) > NAME_MAX_BYTES:
        raise SettingsError(key, name[:40] + "...", f"a file name of at most {NAME_MAX_BYTES} bytes with "
                            f"'-{samples_per_prompt - 1}.{fmt}'{hint}")
    return name


def _anchor_path(value: Any, prompt_file: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise SettingsError("anchor_image", value, "an image file's path (relative: to the prompt file's folder)")
    image = Path(value)
    return image if image.is_absolute() else prompt_file.parent / image


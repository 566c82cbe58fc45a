"""The output folder of ``i4vgen batch``: which samples it holds complete, and how one more lands there whole.

A sample is complete when ``batch.jsonl`` holds its line and its video file has the size that line records. The
order of writing makes that true at every instant: a sample runs in its own folder under ``.i4vgen-batch-work/``
(generate's whole-or-nothing output), its video is renamed into the flat folder (``os.replace``: whole or absent),
and only then is its line appended. A process killed anywhere leaves at worst a work folder (removed by the next
run) or a video without its line (redone, with the same seed and so the same bytes).

``batch.jsonl`` gets one ``os.write`` of one line per sample through an ``O_APPEND`` descriptor: on a local file
system concurrent appends of the processes never interleave. (Network file systems such as NFS do not promise
that across machines: there give each machine its own ``--out``.)"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Mapping

RECORDS = "batch.jsonl"
WORK = ".i4vgen-batch-work"


class BatchFolder:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise OSError(f"out = {str(self.out)!r} is a file: expected a folder")
        self.records = self.out / RECORDS
        self.work = self.out / WORK

    def prepare(self, plans: Mapping[str, str]) -> int:
        """Before any sample runs (one process, the others waiting): drop what an earlier run left half done (its
        work folders; lines that are not whole JSON, whose video is gone or another size, or that the suite now
        plans differently), so that every process then reads the same state. Returns how many lines were dropped."""
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        lines = self._read_lines()
        kept = self._complete(lines, plans)
        wanted = [line for line in lines if self._is_kept(line, kept)]
        if len(wanted) != len(lines):
            staging = self.out / f".{RECORDS}.rewrite"
            staging.write_text("".join(text + "\n" for text, _ in wanted), encoding="utf-8")
            os.replace(staging, self.records)
        return len(lines) - len(wanted)

    def finished(self, plans: Mapping[str, str]) -> Dict[str, dict]:
        """File name -> its record, for every sample of the suite that is complete."""
        return self._complete(self._read_lines(), plans)

    def work_folder(self, file_name: str) -> Path:
        return self.work / file_name

    def land(self, video: Path, file_name: str, record: Mapping) -> None:
        """Move a finished sample's video into the flat folder, then append its line."""
        target = self.out / file_name
        os.replace(video, target)
        line = json.dumps(dict(record, file=file_name, bytes=target.stat().st_size), allow_nan=False)
        data = (line + "\n").encode("utf-8")
        fd = os.open(self.records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: the short line is dropped by the next run's prepare()
                raise OSError(f"{self.records}: wrote {written} of {len(data)} bytes of a record")
        finally:
            os.close(fd)

    def tidy(self) -> None:
        """The work folder goes once no process uses it (each removes its own sample folders as it goes)."""
        try:
            self.work.rmdir()
        except OSError:
            pass

    # ---- reading ---------------------------------------------------------------------------------------------
    def _read_lines(self) -> List[tuple]:
        """(text, record or None) per line of batch.jsonl; None for a line that is not a whole JSON record."""
        try:
            text = self.records.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        rows = []
        for row in text.split("\n"):
            if not row.strip():
                continue
            try:
                record = json.loads(row)
            except ValueError:
                record = None
            rows.append((row, record if isinstance(record, dict) else None))
        return rows

    def _complete(self, lines: List[tuple], plans: Mapping[str, str]) -> Dict[str, dict]:
        """The last line of each file whose video is there with the recorded size; for a file of the suite also
        planned as the suite plans it now (same settings, seed, model, format)."""
        latest: Dict[str, dict] = {}
        for _, record in lines:
            name = record.get("file") if record else None
            if isinstance(name, str) and Path(name).name == name:
                latest[name] = record
        complete = {}
        for name, record in latest.items():
            if name in plans and record.get("plan") != plans[name]:
                continue
            try:
                size = (self.out / name).stat().st_size
            except OSError:
                continue
            if size == record.get("bytes"):
                complete[name] = record
        return complete

    @staticmethod
    def _is_kept(line: tuple, kept: Mapping[str, dict]) -> bool:
        _, record = line
        return record is not None and kept.get(record.get("file")) is record

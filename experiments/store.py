"""The shared, resumable cell store of a sweep folder.

``<out>/cells.jsonl`` holds one JSON record per finished cell, appended (and fsynced)
the moment the cell finishes; the three scripts share it, so a cell whose key is in
the store is never run again (unless ``--force``). A line cut short by a killed
process or a full disk is skipped with a warning when reading, and the next record
starts on a fresh line, so it cannot glue onto the torn one. Cells whose run failed are appended to
``<out>/failed.jsonl`` instead: they are retried on the next run and never feed a
table. ``<out>/.lock`` keeps two sweeps from working on one folder at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

STORE_NAME = "cells.jsonl"
FAILED_NAME = "failed.jsonl"
LOCK_NAME = ".lock"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; malformed lines (a write cut short) are skipped with a warning."""
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: skipped a record cut short ({line[:60]!r}...)", stacklevel=2)
            continue
        if isinstance(record, dict) and "key" in record:
            out.append(record)
    return out


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as a line, flushed and fsynced before returning.

    The record starts on a fresh line even when the file ends in a line cut short.
    """
    line = json.dumps(record, sort_keys=False, default=str) + "\n"
    with path.open("ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())


class CellStore:
    """Finished cells of one sweep folder, by key (the last record of a key wins).

    Parameters
    ----------
    folder:
        The sweep's ``--out`` folder (created if needed).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STORE_NAME
        self.failed_path = self.folder / FAILED_NAME
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {r["key"]: r for r in read_jsonl(self.path)}

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of a finished cell, or None."""
        return self._records.get(key)

    def add(self, record: Mapping[str, Any]) -> None:
        """Append a finished cell's record (thread-safe, durable on return)."""
        with self._lock:
            append_jsonl(self.path, record)
            self._records[str(record["key"])] = dict(record)

    def add_failure(self, record: Mapping[str, Any]) -> None:
        """Append a failed cell's record to ``failed.jsonl`` (not a result)."""
        with self._lock:
            append_jsonl(self.failed_path, record)

    def failures(self) -> list[dict[str, Any]]:
        """Every failure ever recorded in this folder."""
        return read_jsonl(self.failed_path)


class FolderLock:
    """An exclusive ``flock`` on ``<out>/.lock`` (released by the kernel if the process dies)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fh = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise RuntimeError(f"another sweep is working on {self.path.parent} (pid {holder or '?'}); "
                               "wait for it or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

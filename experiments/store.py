"""The shared, resumable cell store of a sweep folder, and its typed record.

``<out>/cells.jsonl`` holds one JSON :class:`CellRecord` per finished cell, appended
(and fsynced) the moment the cell finishes; the three scripts share it, so a cell
whose key is in the store is never run again (unless ``--force``). A line cut short
by a killed process or a full disk is skipped with a warning when reading, and the
next record starts on a fresh line, so it cannot glue onto the torn one. Cells whose
run failed are appended to ``<out>/failed.jsonl`` instead: they are retried on the
next run and never feed a table. ``<out>/.lock`` keeps two sweeps from working on one
folder at once.

A record names its run folder and log relative to the sweep folder
(``runs/<cell name>``), so a sweep folder can be moved, shared and tabulated
elsewhere. Stores written before that named them by absolute path: such a path
inside the sweep folder is read as the relative one.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

from experiments.summaries import RunSummary

STORE_NAME = "cells.jsonl"
FAILED_NAME = "failed.jsonl"
LOCK_NAME = ".lock"
#: The sweep folder's sub-folder of run folders (``<out>/runs/<cell name>``).
RUNS_DIR = "runs"


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


def relative_path(path: str | Path | None, folder: str | Path) -> str:
    """``path`` as a store names it: relative to the sweep ``folder`` where it lies inside it.

    A relative path is kept; an absolute one outside ``folder`` is kept too, unless it
    no longer exists and ``folder`` has a run folder of its name (a moved sweep folder).
    ``None`` and ``""`` give ``""``.
    """
    if not path:
        return ""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    for base in dict.fromkeys((Path(folder).absolute(), Path(folder).resolve())):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    moved = Path(RUNS_DIR) / path.name
    if path.parent.name == RUNS_DIR and not path.exists() and (Path(folder) / moved).is_dir():
        return str(moved)
    return str(path)


@dataclass(frozen=True)
class CellRecord:
    """What became of one cell's run: the line the store keeps for it.

    Attributes
    ----------
    key, name, kind:
        The cell's identity (:class:`~experiments.profiles.Cell`).
    status:
        ``ok`` (a result), ``error`` (the run could not be started or timed out),
        ``failed`` (Flower reported a failure) or ``incomplete`` (its folder lacks a result).
    dataset, algorithm, level, seed, num_supernodes:
        What was run (``algorithm`` is the family, ``sgd`` for no compression).
    run_config:
        The app's run config (``output-dir`` relative to the sweep folder, like ``run_dir``).
    federation_config:
        Extra federation config of the worker (each client's GPU share).
    run_dir, log:
        The run folder and the ``flwr run`` log, relative to the sweep folder.
    worker, script, fedtrust_commit, host:
        Where, by which script and from which commit it ran.
    started, finished, seconds:
        When, and how long the ``flwr run`` took.
    run_id, flwr_status, flwr_details:
        What Flower said of the run.
    error:
        Why it is not a result.
    summary:
        The numbers of the run folder (:class:`~experiments.summaries.RunSummary`), for ``ok``.
    """

    key: str
    name: str = ""
    kind: str = ""
    status: str = "ok"
    dataset: str = ""
    algorithm: str = ""
    level: int = 0
    seed: int | None = None
    run_config: Mapping[str, Any] = field(default_factory=dict)
    num_supernodes: int = 0
    federation_config: Mapping[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    log: str = ""
    worker: str = ""
    script: str = ""
    fedtrust_commit: str | None = None
    host: str = ""
    started: str = ""
    finished: str = ""
    seconds: float | None = None
    run_id: int | None = None
    flwr_status: str = ""
    flwr_details: str = ""
    error: str = ""
    summary: RunSummary | None = None

    @property
    def ok(self) -> bool:
        """Whether the record is a result (feeds the tables)."""
        return self.status == "ok" and self.summary is not None

    def run_path(self, folder: str | Path) -> Path | None:
        """The run folder as a path, for the sweep ``folder`` (``None`` when the record has none)."""
        return Path(folder) / self.run_dir if self.run_dir else None

    def to_json(self) -> dict[str, Any]:
        """The store's JSON line (the summary in :meth:`RunSummary.to_json` form)."""
        blob = {f.name: getattr(self, f.name) for f in fields(self)}
        blob["run_config"], blob["federation_config"] = dict(self.run_config), dict(self.federation_config)
        blob["summary"] = None if self.summary is None else self.summary.to_json()
        return blob

    @classmethod
    def from_json(cls, blob: Mapping[str, Any], folder: str | Path | None = None) -> CellRecord:
        """Read :meth:`to_json`; with ``folder``, absolute paths inside it become relative (older stores)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in blob.items() if k in names}
        summary = values.get("summary")
        values["summary"] = None if summary is None else RunSummary.from_json(summary)
        record = cls(**values)
        if folder is None:
            return record
        config = dict(record.run_config)
        if "output-dir" in config:
            config["output-dir"] = relative_path(config["output-dir"], folder)
        return replace(record, run_dir=relative_path(record.run_dir, folder), log=relative_path(record.log, folder),
                       run_config=config)


def read_records(path: Path, folder: str | Path | None = None) -> list[CellRecord]:
    """The records of a store file (torn lines skipped with a warning), paths relative to ``folder``."""
    return [CellRecord.from_json(blob, folder) for blob in read_jsonl(path)]


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
        self._records: dict[str, CellRecord] = {r.key: r for r in read_records(self.path, self.folder)}

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[CellRecord]:
        return iter(list(self._records.values()))

    def get(self, key: str) -> CellRecord | None:
        """The record of a finished cell, or None."""
        return self._records.get(key)

    def add(self, record: CellRecord) -> None:
        """Append a finished cell's record (thread-safe, durable on return)."""
        with self._lock:
            append_jsonl(self.path, record.to_json())
            self._records[record.key] = record

    def add_failure(self, record: CellRecord) -> None:
        """Append a failed cell's record to ``failed.jsonl`` (not a result)."""
        with self._lock:
            append_jsonl(self.failed_path, record.to_json())

    def failures(self) -> list[CellRecord]:
        """Every failure ever recorded in this folder."""
        return read_records(self.failed_path, self.folder)


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

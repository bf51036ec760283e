"""The run folder: resolved config, per-round rows and intercepted updates.

Layout of ``<output-dir>/<run-name>/``::

    config.json          resolved run config, package versions, seed, start time
    rounds.csv           one row per finished round (written as each round ends)
    intercepted/         round{R}_client{P}.pt, see fedtrust.interception
    checkpoint.pt        the state after the last finished round (written by the strategy)
    finished.json        written last: the run is complete (a resume of it does nothing)

Every CSV of a run folder has a ``round`` column; rows of the final model (the black-box
membership inference) have an empty ``client``. That is what lets a resume drop exactly
the rows written after the checkpoint (:meth:`RunFolder.discard_after`).

No credential is written here: the command line is stored with the values of
token, key, secret and password options replaced (:func:`redact_argv`).
"""

from __future__ import annotations

import csv
import json
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROUND_COLUMNS = ("round", "test_accuracy", "test_loss", "train_loss", "clients", "rejected", "failed",
                 "uplink_bytes", "dense_bytes", "buffer_bytes", "seconds", "clipped")

#: Command-line options whose value is a credential (``--token X``, ``--token=X``).
_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "api-key", "apikey", "private-key",
                 "auth-key")
REDACTED = "<redacted>"


def _is_secret_option(arg: str) -> bool:
    name = arg.split("=", 1)[0].lower()
    return name.startswith("-") and any(word in name for word in _SECRET_WORDS)


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every credential option replaced by ``<redacted>``.

    Flower starts the ServerApp with ``--token <run token>``; a token in a run folder
    would let anyone who reads the folder act as that run.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif _is_secret_option(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
        else:
            out.append(arg)
    return out

_PACKAGES = ("fedtrust", "flwr", "flwr-datasets", "torch", "torchvision", "numpy", "scikit-image",
             "pandas", "matplotlib")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class RunFolder:
    """One run's output folder."""

    path: Path

    @staticmethod
    def _child(output_dir: str | Path, name: str) -> tuple[Path, Path]:
        """``(base, base/name)``; ``name`` must name a folder directly inside ``base``."""
        base = Path(output_dir).expanduser().resolve()
        path = (base / name).resolve()
        if not name or path.parent != base or name in (".", ".."):
            raise ValueError(f"run-name={name!r} does not name a folder inside output-dir {base}")
        return base, path

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunFolder:
        """Make ``output_dir/name`` (a new folder; an existing one gets a numeric suffix)."""
        base, path = cls._child(output_dir, name)
        suffix = 1
        while path.exists():
            suffix += 1
            path = base / f"{name}-{suffix}"
        (path / "intercepted").mkdir(parents=True)
        return cls(path)

    @property
    def rounds_csv(self) -> Path:
        return self.path / "rounds.csv"

    @property
    def intercepted_dir(self) -> Path:
        return self.path / "intercepted"

    def intercepted_file(self, server_round: int, partition_id: int) -> Path:
        return self.intercepted_dir / f"round{server_round}_client{partition_id}.pt"

    def write_config(self, config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``: the resolved config, versions, command line and time."""
        blob = {
            "config": config,
            "seed": config.get("seed"),
            "versions": package_versions(),
            "argv": redact_argv(list(sys.argv)),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        out = self.path / "config.json"
        out.write_text(json.dumps(blob, indent=2, sort_keys=False, default=str) + "\n")
        return out

    @classmethod
    def open(cls, output_dir: str | Path, name: str) -> RunFolder:
        """An existing run folder (to resume it)."""
        _, path = cls._child(output_dir, name)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a fedtrust run folder (no config.json): nothing to resume")
        return cls(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    def read_config(self) -> dict[str, Any]:
        """The run config stored in ``config.json`` (run-config key names)."""
        return dict(json.loads(self.config_json.read_text())["config"])

    @property
    def finished_json(self) -> Path:
        return self.path / "finished.json"

    def mark_finished(self, errors: list[str] | None = None) -> Path:
        """Write ``finished.json`` (atomically): the run is complete; ``errors`` are its attack errors."""
        tmp = self.finished_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "attack_errors": list(errors or [])}, indent=2) + "\n")
        tmp.replace(self.finished_json)
        return self.finished_json

    def finished(self) -> dict[str, Any] | None:
        """The contents of ``finished.json``, or None while the run is not complete."""
        if not self.finished_json.is_file():
            return None
        return dict(json.loads(self.finished_json.read_text()))

    def discard_after(self, last_round: int) -> dict[str, int]:
        """Forget what an unfinished run wrote after round ``last_round``'s checkpoint.

        In every CSV of the folder, rows of later rounds and rows of the final model (an
        empty ``client``: written only after the last round) go; intercepted updates of
        later rounds are deleted. Returns the number of rows dropped per file name.
        """
        dropped: dict[str, int] = {}
        for path in sorted(self.path.glob("*.csv")):
            dropped[path.name] = _drop_rows_after(path, last_round)
        for path in self.intercepted_dir.glob("round*_client*.pt"):
            try:
                server_round = int(path.name[len("round"):].split("_", 1)[0])
            except ValueError:
                continue
            if server_round > last_round:
                path.unlink()
        return dropped

    def truncate_rounds(self, last_round: int) -> None:
        """Keep only the ``rounds.csv`` rows up to ``last_round`` (rows of an unfinished round go)."""
        if not self.rounds_csv.exists():
            return
        rows = [r for r in read_rounds(self.rounds_csv) if int(r["round"]) <= last_round]
        tmp = self.rounds_csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=ROUND_COLUMNS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in ROUND_COLUMNS} for r in rows)
        tmp.replace(self.rounds_csv)

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one round's row to ``rounds.csv`` (header on first write), flushed at once."""
        new = not self.rounds_csv.exists()
        with self.rounds_csv.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=ROUND_COLUMNS, extrasaction="raise")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in ROUND_COLUMNS})


def _drop_rows_after(path: Path, last_round: int) -> int:
    """Rewrite a CSV without rows of rounds after ``last_round`` or of the final model; rows dropped."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "round" not in fields:
        return 0

    def keep(row: dict[str, str]) -> bool:
        try:
            in_time = int(row["round"]) <= last_round
        except (TypeError, ValueError):
            return False  # a row cut short by a kill
        return in_time and not ("client" in fields and row.get("client", "") == "")

    kept = [r for r in rows if keep(r)]
    if len(kept) == len(rows):
        return 0
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)
    return len(rows) - len(kept)


def read_rounds(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run folder's ``rounds.csv``."""
    path = Path(path)
    csv_path = path / "rounds.csv" if path.is_dir() else path
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))

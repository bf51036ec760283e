"""The run folder: resolved config, per-round rows and intercepted updates.

Layout of ``<output-dir>/<run-name>/``::

    config.json          resolved run config, package versions, seed, start time
    rounds.csv           one row per finished round (written as each round ends)
    intercepted/         round{R}_client{P}.pt, see fedtrust.interception
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
                 "uplink_bytes", "dense_bytes", "buffer_bytes", "seconds")

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

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunFolder:
        """Make ``output_dir/name`` (a new folder; an existing one gets a numeric suffix)."""
        base = Path(output_dir).expanduser().resolve()
        path = base / name
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
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        out = self.path / "config.json"
        out.write_text(json.dumps(blob, indent=2, sort_keys=False, default=str) + "\n")
        return out

    @classmethod
    def open(cls, output_dir: str | Path, name: str) -> RunFolder:
        """An existing run folder (to resume it)."""
        path = Path(output_dir).expanduser().resolve() / name
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a fedtrust run folder (no config.json): nothing to resume")
        return cls(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

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


def read_rounds(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run folder's ``rounds.csv``."""
    path = Path(path)
    csv_path = path / "rounds.csv" if path.is_dir() else path
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))

"""What a finished run folder holds, as the small typed summary a cell record keeps.

Reads ``rounds.csv``, ``gradinv.csv`` and ``mia.csv`` of a run folder
(:mod:`fedtrust.records`: the result tables are read back with the row classes their
writers append, :class:`~fedtrust.records.GradInvRow` and
:class:`~fedtrust.records.MIARow`) and keeps every per-image and per-attack number the
tables need, so tables are built from the store alone.

The summary's rows are frozen dataclasses too (:class:`ImageScore`,
:class:`AttackScore`: a result row without the context the cell record already holds);
the same classes are written into the cell record (:class:`RunSummary`, JSON) and read
back by the tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from fedtrust.records import GRADINV_CSV, MIA_CSV, GradInvRow, MIAMetrics, MIARow, read_rows

#: Files each cell kind must have produced for its record to be a result.
REQUIRED = {"gradinv": ("rounds.csv", GRADINV_CSV), "mia": ("rounds.csv", MIA_CSV),
            "update": ("rounds.csv", MIA_CSV)}


class IncompleteRun(RuntimeError):
    """A run reported success but its folder lacks what its kind must produce."""


Score = TypeVar("Score")


def _subset(cls: type[Score], row: Any) -> Score:
    """The fields of the dataclass ``cls`` taken from ``row`` (a result row with more fields)."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ImageScore:
    """One reconstructed image (a :class:`~fedtrust.records.GradInvRow` without the compressor
    and seed of its cell): whose image, which attacker, how close."""

    attacker: str
    round: int
    client: int
    image: int
    label: int
    label_inferred: bool
    ssim: float
    psnr: float
    mse: float
    iterations: int
    seconds: float

    @classmethod
    def of(cls, row: GradInvRow) -> ImageScore:
        return _subset(cls, row)


@dataclass(frozen=True)
class AttackScore(MIAMetrics):
    """One membership-inference result: an attack's metrics and the round it attacked (a
    :class:`~fedtrust.records.MIARow` without the context its cell holds).

    ``scope`` is ``global``, ``per_class`` or ``nonmember`` for the black-box attacks on a model and
    ``update`` for the update attacks on one intercepted client update.
    """

    round: int

    @classmethod
    def of(cls, row: MIARow) -> AttackScore:
        return _subset(cls, row)


@dataclass(frozen=True)
class RoundPoint:
    """One round of ``rounds.csv``: the test accuracy and the uplink bytes of all clients."""

    round: int
    test_accuracy: float | None
    uplink_bytes: float | None


@dataclass(frozen=True)
class RoundsSummary:
    """The run's final accuracy and loss, and its mean traffic per round and per client and round."""

    rounds: int
    test_accuracy: float
    test_loss: float
    uplink_bytes_per_client_round: float
    dense_bytes_per_client_round: float
    train_loss: float | None = None
    clients_per_round: float = 0.0
    uplink_bytes_per_round: float = 0.0
    buffer_bytes_per_round: float = 0.0
    seconds: float = 0.0
    per_round: tuple[RoundPoint, ...] = ()
    #: Client-level DP: the worst client's epsilon after the last round (``None`` without DP).
    epsilon: float | None = None

    @classmethod
    def from_json(cls, blob: Mapping[str, Any]) -> RoundsSummary:
        return cls(**{**_known(cls, blob), "per_round": tuple(RoundPoint(**_known(RoundPoint, p))
                                                               for p in blob.get("per_round", ()))})


@dataclass(frozen=True)
class AppInfo:
    """What the app recorded about itself in the run folder's ``config.json``."""

    run_id: int | None = None
    started: str | None = None
    versions: Mapping[str, Any] | None = None
    num_parameters: int | None = None


@dataclass(frozen=True)
class RunSummary:
    """Everything a cell record keeps of its run folder.

    Attributes
    ----------
    rounds:
        From ``rounds.csv``.
    images:
        Every reconstructed image of ``gradinv.csv`` (gradinv cells).
    attacks:
        Every membership-inference result of ``mia.csv`` (mia and update cells).
    app:
        From ``config.json``, when the folder has one.
    """

    rounds: RoundsSummary
    images: tuple[ImageScore, ...] = ()
    attacks: tuple[AttackScore, ...] = ()
    app: AppInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form of the store (``rounds``, ``gradinv.images``, ``mia.results``, ``app``)."""
        out: dict[str, Any] = {"rounds": asdict(self.rounds)}
        if self.images:
            out["gradinv"] = {"images": [asdict(im) for im in self.images]}
        if self.attacks:
            out["mia"] = {"results": [asdict(a) for a in self.attacks]}
        if self.app is not None:
            out["app"] = asdict(self.app)
        return out

    @classmethod
    def from_json(cls, blob: Mapping[str, Any]) -> RunSummary:
        """Read :meth:`to_json` (and the records written before the summary was typed)."""
        images = blob.get("gradinv", {}).get("images", ())
        attacks = blob.get("mia", {}).get("results", ())
        app = blob.get("app")
        return cls(rounds=RoundsSummary.from_json(blob["rounds"]),
                   images=tuple(ImageScore(**_known(ImageScore, im)) for im in images),
                   attacks=tuple(AttackScore(**_known(AttackScore, a)) for a in attacks),
                   app=None if app is None else AppInfo(**_known(AppInfo, app)))


def _known(cls: type, blob: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``blob`` that are fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in blob.items() if k in names}


# ------------------------------------------------------------------ reading the CSVs
def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file of a run folder, every number parsed by Python's own ``float`` and ``int``
    (pandas' Python engine), so that a summary read again is the same to the bit whatever
    the pandas version; empty cells are NaN."""
    return pd.read_csv(path, engine="python")


def _mean(values: pd.Series) -> float:
    """The mean summed left to right, as the summaries in existing stores were."""
    return sum(values.tolist()) / len(values)


def _optional(value: Any) -> float | None:
    return None if pd.isna(value) else float(value)


def rounds_summary(frame: pd.DataFrame) -> RoundsSummary:
    """Final accuracy and loss, and the mean uplink per round and per client per round."""
    if frame.empty:
        raise IncompleteRun("rounds.csv has no rows")
    last = frame.iloc[-1]
    clients = frame["clients"].fillna(0).astype(int).clip(lower=1)
    uplink = frame["uplink_bytes"].astype(float)
    return RoundsSummary(
        rounds=len(frame),
        test_accuracy=float(last["test_accuracy"]),
        test_loss=float(last["test_loss"]),
        train_loss=_optional(last["train_loss"]),
        clients_per_round=_mean(clients),
        uplink_bytes_per_round=_mean(uplink),
        uplink_bytes_per_client_round=_mean(uplink / clients),
        dense_bytes_per_client_round=_mean(frame["dense_bytes"].astype(float) / clients),
        buffer_bytes_per_round=_mean(frame["buffer_bytes"].fillna(0).astype(float)),
        seconds=sum(frame["seconds"].fillna(0).astype(float).tolist()),
        per_round=tuple(RoundPoint(int(r), _optional(a), _optional(u)) for r, a, u in
                        zip(frame["round"], frame["test_accuracy"], frame["uplink_bytes"])),
        epsilon=_optional(last["epsilon"]) if "epsilon" in frame else None,
    )


def _nonempty(rows: list[Score], name: str) -> tuple[Score, ...]:
    if not rows:
        raise IncompleteRun(f"{name} has no rows")
    return tuple(rows)


def app_info(path: Path) -> AppInfo:
    """The run's id, start, versions and model size from its ``config.json``."""
    return AppInfo(**_known(AppInfo, json.loads(path.read_text())))


def summarize_run(folder: str | Path, kind: str) -> RunSummary:
    """The summary of a finished run folder for a cell of ``kind``.

    Raises
    ------
    IncompleteRun
        When a file the kind must produce is missing or empty.
    """
    folder = Path(folder)
    missing = [f for f in REQUIRED[kind] if not (folder / f).is_file()]
    if missing:
        raise IncompleteRun(f"{folder} lacks {', '.join(missing)}")
    gradinv, mia, config = folder / GRADINV_CSV, folder / MIA_CSV, folder / "config.json"
    images = [ImageScore.of(row) for row in read_rows(gradinv, GradInvRow)] if gradinv.is_file() else None
    attacks = [AttackScore.of(row) for row in read_rows(mia, MIARow)] if mia.is_file() else None
    return RunSummary(
        rounds=rounds_summary(read_csv(folder / "rounds.csv")),
        images=() if images is None else _nonempty(images, gradinv.name),
        attacks=() if attacks is None else _nonempty(attacks, mia.name),
        app=app_info(config) if config.is_file() else None,
    )


def check_config(folder: str | Path, expected: Mapping[str, Any]) -> None:
    """Raise ``IncompleteRun`` unless the run folder's ``config.json`` has the expected values."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise IncompleteRun(f"{path} is missing")
    got = json.loads(path.read_text()).get("config", {})
    wrong = {k: (v, got.get(k)) for k, v in expected.items() if k in got and got[k] != v
             and not (isinstance(v, float) and isinstance(got[k], (int, float)) and float(got[k]) == v)}
    if wrong:
        raise IncompleteRun(f"{path}: the run used other settings than the cell: {wrong}")

"""The run folder: resolved config, result rows as typed records, intercepted updates.

Layout of ``<output-dir>/<run-name>/``::

    config.json          resolved run config, package versions, seed, start time
    rounds.csv           one RoundRow per finished round (written as each round ends)
    gradinv.csv          one GradInvRow per reconstructed image and attacker
    gradinv/             the originals and reconstructions as PNGs, named by gradinv_png()
    mia.csv              one MIARow per membership attack and threshold scope
    intercepted/         round{R}_client{P}.pt, see fedtrust.interception
    checkpoint.pt        the state after the last finished round (written by the strategy)
    finished.json        written last: the run is complete (a resume of it does nothing)

The rows are frozen dataclasses: a CSV's columns are the fields of its row class, in
order (:func:`csv_columns`), the writers append rows of that class (:func:`append_rows`)
and the readers get them back typed (:func:`read_rows`), so writer and reader share one
schema.

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
import re
import sys
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args, get_type_hints

if TYPE_CHECKING:
    from fedtrust.compression.spec import CompressorSpec

#: The ``partition_id`` (and ``client`` in the CSVs) of a round's aggregate: the weighted mean of
#: its updates, all a server running secure aggregation sees (``observe = "aggregate"``).
AGGREGATE = -1

#: File names of a run folder's result tables.
GRADINV_CSV = "gradinv.csv"
MIA_CSV = "mia.csv"


# ------------------------------------------------------------------ result rows
@dataclass(frozen=True)
class RoundRow:
    """One row of ``rounds.csv``: a finished round's accuracy, loss and traffic."""

    round: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    clients: int
    rejected: int
    failed: int
    uplink_bytes: int
    dense_bytes: int
    buffer_bytes: int
    seconds: float
    clipped: int
    #: Client-level DP: the largest epsilon (at ``dp-delta``) of any client after this round; empty without DP.
    epsilon: float | None = None


@dataclass(frozen=True)
class GradInvRow:
    """One row of ``gradinv.csv``: one reconstructed image of one attacker.

    ``image`` is the index, in the client's batch, of the true image the reconstruction
    was matched to; ``level`` is 0 for a compressor without levels.
    """

    round: int
    client: int
    image: int
    label: int
    label_inferred: bool
    attacker: str
    compressor: str
    level: int
    ssim: float
    psnr: float
    mse: float
    iterations: int
    seconds: float
    seed: int
    model_mode: str = "train"  # client-model-mode; files written before it existed were all "train"


@dataclass(frozen=True)
class MIAMetrics:
    """The metrics of one membership attack with one threshold scope (the first columns of ``mia.csv``).

    Attributes
    ----------
    attack:
        Attack name (``"loss"``, ``"update_cosine"`` ...).
    scope:
        ``"global"``, ``"per_class"``, ``"nonmember"`` (black-box), ``"update"`` or ``"reference"``.
    accuracy:
        Balanced accuracy of the calibrated thresholds (the paper's number).
    auc:
        ROC AUC of the scores.
    tpr_at_1pct_fpr, tpr_at_0_1pct_fpr:
        TPR at FPR <= 1% and <= 0.1%.
    members, nonmembers:
        Evaluation candidates of each kind.
    reference_models:
        Reference models the attack used (LiRA, RMIA; 0 for the others).
    threshold:
        How ``accuracy``'s threshold was set: ``oracle`` (on calibration candidates whose
        membership is known, which no real attacker has: an upper bound), ``non-members`` (on
        known non-members alone, at ``ATTACKER_FPR`` false positives), ``shadow`` (on a
        reference model playing the target, whose training data the attacker chose),
        ``label-free`` (a rule that needs no membership) or ``none``.
    auc_low, auc_high, tpr_at_1pct_fpr_low, ..., tpr_at_0_1pct_fpr_high:
        Stratified percentile-bootstrap 95% intervals (:mod:`fedtrust.attacks.mia.intervals`)
        over ``resamples`` resamples of the evaluated candidates; empty (``None``) in files
        from before they were computed.
    accuracy_low, accuracy_high:
        The same interval of ``accuracy`` where one threshold decides (global, non-member,
        label-free and shadow thresholds; empty for per-class thresholds and older files).
    """

    attack: str
    scope: str
    accuracy: float
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float
    members: int
    nonmembers: int
    reference_models: int = field(default=0, kw_only=True)
    threshold: str = field(default="oracle", kw_only=True)
    auc_low: float | None = field(default=None, kw_only=True)
    auc_high: float | None = field(default=None, kw_only=True)
    tpr_at_1pct_fpr_low: float | None = field(default=None, kw_only=True)
    tpr_at_1pct_fpr_high: float | None = field(default=None, kw_only=True)
    tpr_at_0_1pct_fpr_low: float | None = field(default=None, kw_only=True)
    tpr_at_0_1pct_fpr_high: float | None = field(default=None, kw_only=True)
    resamples: int = field(default=0, kw_only=True)
    accuracy_low: float | None = field(default=None, kw_only=True)
    accuracy_high: float | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class MIARow(MIAMetrics):
    """One row of ``mia.csv``: an attack's metrics, the run's compressor, where and with which seed.

    ``client`` is the attacked partition of an update attack and ``None`` (an empty cell)
    for the black-box attacks on the final model; ``level`` is 0 for a compressor without
    levels.
    """

    compressor: str
    level: int
    round: int
    client: int | None
    seed: int

    @classmethod
    def of(cls, metrics: MIAMetrics, *, compressor: str, level: int, round: int, client: int | None,
           seed: int) -> MIARow:
        """The row of ``metrics`` (an :class:`MIAMetrics` or a subclass) with its context."""
        shared = {f.name: getattr(metrics, f.name) for f in fields(MIAMetrics)}
        return cls(**shared, compressor=compressor, level=level, round=round, client=client, seed=seed)


Row = TypeVar("Row")


def csv_columns(row_type: type) -> tuple[str, ...]:
    """The CSV columns of a row dataclass: its field names, in order."""
    return tuple(f.name for f in fields(row_type))


def append_rows(path: str | Path, rows: Sequence[Any]) -> None:
    """Append rows of one dataclass to a CSV (the header on first write), flushed at once."""
    if rows:
        _write_dicts(Path(path), csv_columns(type(rows[0])), [asdict(r) for r in rows], append=True)


def read_rows(path: str | Path, row_type: type[Row]) -> list[Row]:
    """The rows of a CSV as ``row_type``, a dataclass whose fields name the columns to read.

    Other columns are ignored. Cells are parsed by the field's type (``int``, ``float``,
    ``str``, ``bool`` written as ``True``/``False``; an empty cell is ``None`` for an
    optional field). A column added to a row class later has a default, which the rows
    of older files take.

    Raises
    ------
    ValueError
        A column of ``row_type`` without a default is missing, or a cell does not parse as
        its field's type.
    """
    hints = get_type_hints(row_type)
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        present = set(reader.fieldnames or ())
        missing = [f.name for f in fields(row_type) if f.name not in present and f.default is MISSING]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} of {row_type.__name__}")
        names = [n for n in csv_columns(row_type) if n in present]
        return [row_type(**{n: _parse(row[n], hints[n], n) for n in names}) for row in reader]


def _parse(text: str | None, kind: Any, name: str) -> Any:
    """A CSV cell as a value of type ``kind``."""
    if isinstance(kind, types.UnionType) and type(None) in get_args(kind):
        if text in (None, ""):
            return None
        (kind,) = [k for k in get_args(kind) if k is not type(None)]
    if kind is bool:
        if text not in ("True", "False"):
            raise ValueError(f"column {name}: {text!r} is not True or False")
        return text == "True"
    if kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"column {name}: {text!r} is not a {kind.__name__}") from None
    return "" if text is None else str(text)


def _write_dicts(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *, append: bool) -> None:
    """Write ``rows`` under ``columns``: appended (a header only into a new file), or replacing
    ``path`` atomically (through a ``.tmp`` file). Keys outside ``columns`` are left out."""
    target = path if append else path.with_suffix(path.suffix + ".tmp")
    new = not append or not path.exists()
    with target.open("a" if append else "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    if not append:
        target.replace(path)


def compressor_cells(spec: CompressorSpec) -> dict[str, Any]:
    """The ``compressor`` and ``level`` cells of a result row: the spec's name and level, the
    level 0 for a compressor without levels (its codec says which)."""
    from fedtrust.compression.registry import codec_class

    return {"compressor": spec.name, "level": spec.level if codec_class(spec.name).levelled else 0}


def gradinv_png(folder: str | Path, server_round: int, client: int, what: str, image: int) -> Path:
    """The PNG of image ``image`` of client ``client``'s batch in round ``server_round``.

    ``what`` is ``"original"`` (the true image) or an attacker (``"naive"``,
    ``"adaptive"``: its reconstruction matched to that image):
    ``<folder>/gradinv/round{R}_client{P}_{what}_{i}.png``.
    """
    return Path(folder) / "gradinv" / f"round{server_round}_client{client}_{what}_{image}.png"


#: Columns of ``rounds.csv``.
ROUND_COLUMNS = csv_columns(RoundRow)

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


_PACKAGES = ("fedtrust", "flwr", "flwr-datasets", "datasets", "torch", "torchvision", "numpy", "scipy",
             "scikit-image", "pillow", "pandas", "matplotlib")


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
        """``round{R}_client{P}.pt``, or ``round{R}_aggregate.pt`` for the round's mean (``partition_id`` -1)."""
        who = "aggregate" if partition_id == AGGREGATE else f"client{partition_id}"
        return self.intercepted_dir / f"round{server_round}_{who}.pt"

    def global_state_file(self, server_round: int) -> Path:
        """The global weights of ``server_round``, written once and shared by its intercepted updates."""
        return self.intercepted_dir / f"global_round{server_round}.pt"

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
        for path in self.intercepted_dir.glob("*round*.pt"):
            match = re.fullmatch(r"(?:round(\d+)_(?:client\d+|aggregate)|global_round(\d+))\.pt", path.name)
            if match and int(match.group(1) or match.group(2)) > last_round:
                path.unlink()
        return dropped

    def truncate_rounds(self, last_round: int) -> None:
        """Keep only the ``rounds.csv`` rows up to ``last_round`` (rows of an unfinished round go)."""
        if not self.rounds_csv.exists():
            return
        rows = [r for r in read_rounds(self.rounds_csv) if int(r["round"]) <= last_round]
        _write_dicts(self.rounds_csv, ROUND_COLUMNS, rows, append=False)

    def append_round(self, row: RoundRow) -> None:
        """Append one round's row to ``rounds.csv`` (header on first write), flushed at once."""
        append_rows(self.rounds_csv, [row])


def _drop_rows_after(path: Path, last_round: int) -> int:
    """Rewrite a CSV without rows of rounds after ``last_round`` or of the final model; rows dropped."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "round" not in columns:
        return 0

    def keep(row: dict[str, str]) -> bool:
        try:
            in_time = int(row["round"]) <= last_round
        except (TypeError, ValueError):
            return False  # a row cut short by a kill
        return in_time and not ("client" in columns and row.get("client", "") == "")

    kept = [r for r in rows if keep(r)]
    if len(kept) == len(rows):
        return 0
    _write_dicts(path, columns, kept, append=False)
    return len(rows) - len(kept)


def read_rounds(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run folder's ``rounds.csv``."""
    path = Path(path)
    csv_path = path / "rounds.csv" if path.is_dir() else path
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))

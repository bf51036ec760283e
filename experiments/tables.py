"""The paper's tables from cell records: frames of numbers (pandas) and CSV / Markdown / LaTeX files.

Table 1
    SSIM of the gradient-inversion reconstructions per dataset and algorithm: mean,
    standard deviation and percentage of the SGD baseline's mean, for the naive
    attacker (the paper's) and the adaptive one, with the number of images.
Table 2
    Membership inference on the final model: the paper's three attacks' balanced
    accuracy, plus AUC and TPR at 1% / 0.1% FPR (global and per-class thresholds),
    and the update attacks on intercepted FedSGD updates (beyond the paper).
Trade-off
    Test accuracy, uplink bytes, SSIM and MIA AUC per algorithm.

Each table is a :class:`Table`: a function from cells and records to a long
:class:`pandas.DataFrame` (one row per dataset, algorithm and attacker or attack: the
CSV), and the Markdown and LaTeX views of that frame. Statistics are numpy's (the mean
and the population standard deviation, ``ddof=0``), applied per group, so the numbers
are those of the earlier hand-written loops to the bit.

Every table file ends with a footer giving the seed and configuration, and has a
``<name>.json`` sidecar with the command, every cell's full run config and run folder
(relative to the sweep folder, like every path the tables write).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.profiles import Algorithm, Cell, dataset_label
from experiments.store import CellRecord, relative_path
from experiments.summaries import AttackScore, ImageScore
from fedtrust.attacks.mia.thresholds import ATTACKER_FPR
from fedtrust.config_keys import BY_KEY
from fedtrust.markdown import MISSING, fmt_bytes, markdown
from fedtrust.stats import auc_interval, balanced_accuracy_interval, bootstrap_mean

ATTACKERS = ("naive", "adaptive")
#: The paper's three black-box attacks: column label -> fedtrust attack name.
PAPER_MIA = {"Prediction": "confidence", "Loss": "loss", "Cross-Entropy": "modified_entropy"}
#: Every black-box attack and threshold scope of Table 2's rows.
BLACKBOX_ATTACKS = ("confidence", "loss", "entropy", "modified_entropy")
BLACKBOX_SCOPES = ("global", "per_class", "nonmember")
#: Update attacks (beyond the paper): column label -> fedtrust attack name.
UPDATE_MIA = {"cosine": "update_cosine", "cosine (aware)": "update_cosine_aware",
              "loss drop": "update_loss_drop", "regression": "update_regression"}
#: Reference-model attacks (``mia-reference-models`` > 0): column label -> fedtrust attack name.
REFERENCE_MIA = {"LiRA": "lira_online", "RMIA": "rmia_online"}

MIA_FOOTNOTE = ("Prediction MIA = the true-class softmax confidence (Shokri et al. 2017), Loss MIA = the "
                "cross-entropy loss (Yeom et al. 2018), Cross-Entropy MIA = the modified entropy Mentr of "
                "Song & Mittal (2021), which uses the true label; balanced accuracy of a threshold chosen on a "
                "disjoint calibration half of the candidates (members: train samples the clients trained on; "
                "non-members: held-out test samples) knowing their membership, an oracle no real attacker has; "
                "Table 2f sets it the attacker's way, on the calibration non-members alone.")

#: Columns written as integers (empty where missing), not as floats.
INT_COLUMNS = ("level", "n", "seed", "round", "members", "nonmembers", "rounds", "n_images", "reference_models")


# ------------------------------------------------------------------ metadata and footers
@dataclass
class TableMeta:
    """Where a table came from: written in its footer and its JSON sidecar."""

    script: str
    profile: str
    command: str
    generated: str
    commit: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def records_of(cells: Sequence[Cell], records: Iterable[CellRecord]) -> dict[str, CellRecord]:
    """The finished (``ok``) records of ``cells``, by key."""
    keys = {c.key for c in cells}
    return {r.key: r for r in records if r.key in keys and r.ok}


#: Settings that decide what an attack table says, named in its footer even at their defaults
#: (when they matter for the cells: the model mode of FedSGD gradients, given or inferred labels).
ALWAYS_NAMED = ("client-model-mode", "attack-labels")


def common_settings(cells: Sequence[Cell], defaults: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per cell kind: the settings all its cells share that differ from the app's defaults
    (and those of :data:`ALWAYS_NAMED` that matter for them)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(c.kind for c in cells):
        group = [c for c in cells if c.kind == kind]
        shared = {}
        for key, value in group[0].run_config.items():
            if key in ("dataset", "compressor", "level"):
                continue
            named = key in ALWAYS_NAMED and all(BY_KEY[key].matters(c.run_config) for c in group)
            if all(c.run_config.get(key) == value for c in group) and (named or defaults.get(key) != value):
                shared[key] = value
        supernodes = {c.num_supernodes for c in group}
        shared["num-supernodes"] = supernodes.pop() if len(supernodes) == 1 else sorted(supernodes)
        out[kind] = shared
    return out


def footer(meta: TableMeta, cells: Sequence[Cell], records: Mapping[str, CellRecord],
           defaults: Mapping[str, Any]) -> list[str]:
    """Footer lines: seed, profile, configuration, command, provenance, missing cells."""
    seeds = sorted({c.seed for c in cells})
    lines = [f"Seed {', '.join(map(str, seeds))}; profile `{meta.profile}`; command `{meta.command}`; "
             f"generated {meta.generated}" + (f" from fedtrust {meta.commit}" if meta.commit else "") + "."]
    for kind, shared in common_settings(cells, defaults).items():
        settings = ", ".join(f"{k}={_value(v)}" for k, v in shared.items())
        lines.append(f"{kind} cells: {settings} (other keys: the app's defaults; full configs in the .json sidecar).")
    missing = [c.name for c in cells if c.key not in records]
    if missing:
        lines.append(f"Missing or failed cells ({len(missing)}), shown as {MISSING}: {', '.join(missing)}.")
    return lines


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) else str(v)


def _sidecar_cell(cell: Cell, record: CellRecord | None) -> dict[str, Any]:
    return {"key": cell.key, "name": cell.name, "kind": cell.kind, "dataset": cell.dataset,
            "algorithm": cell.algorithm.key, "seed": cell.seed, "num_supernodes": cell.num_supernodes,
            "status": "ok" if record else "missing", "run_dir": record.run_dir if record else None,
            "seconds": record.seconds if record else None, "computed_by": record.script if record else None,
            "run_config": dict(cell.run_config)}


def sidecar(meta: TableMeta, cells: Sequence[Cell], records: Mapping[str, CellRecord],
            defaults: Mapping[str, Any], path: Path, files: Sequence[Path]) -> Path:
    """Write ``<name>.json``: provenance and every cell's full config, seed and run folder.

    Files and run folders are named relative to the folder of ``path`` (the sweep folder).
    """
    blob = {
        "script": meta.script, "profile": meta.profile, "description": meta.description,
        "command": meta.command, "generated": meta.generated, "fedtrust_commit": meta.commit,
        "seeds": sorted({c.seed for c in cells}), "files": [relative_path(f, path.parent) for f in files],
        "common_settings": common_settings(cells, defaults), **meta.extra,
        "cells": [_sidecar_cell(c, records.get(c.key)) for c in cells],
    }
    path.write_text(json.dumps(blob, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ formatting
def fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or :data:`MISSING` (``None`` or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """A percentage (already x100) with a ``%`` sign, or :data:`MISSING`."""
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}%"


def _pct(values: pd.Series) -> pd.Series:
    """Fractions shown as percentages."""
    return (100 * values.astype(float)).map(fmt_pct)


def _dec(values: pd.Series, digits: int) -> pd.Series:
    return values.astype(float).map(lambda v: fmt(v, digits))


def latex(frame: pd.DataFrame, labels: int = 2) -> str:
    """A booktabs tabular of a frame of strings: ``labels`` left-aligned columns, the rest right-aligned."""
    return frame.to_latex(index=False, escape=True, multicolumn_format="c",
                          column_format="l" * labels + "r" * (frame.shape[1] - labels)).rstrip("\n")


def _dataset_column(datasets: pd.Series) -> pd.Series:
    """Dataset labels on the first row of each run of one dataset, blank below."""
    return datasets.map(dataset_label).where(datasets.ne(datasets.shift()), "")


# ------------------------------------------------------------------ frames of cells and results
def _datasets(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.dataset for c in cells))


def _algorithms(cells: Sequence[Cell]) -> list[Algorithm]:
    return sorted(dict.fromkeys(c.algorithm for c in cells), key=lambda a: a.sort_key)


def _of_kind(cells: Sequence[Cell], kind: str) -> list[Cell]:
    return [c for c in cells if c.kind == kind]


def _mean(values: pd.Series) -> float:
    return float(np.mean(values.to_numpy(dtype=float)))


def _std(values: pd.Series) -> float:
    """The population standard deviation (``ddof=0``)."""
    return float(np.std(values.to_numpy(dtype=float), ddof=0))


def _int_mean(values: pd.Series) -> int:
    return int(np.mean(values.to_numpy(dtype=float)))


def grid(algos: Sequence[Algorithm], **levels: Sequence[Any]) -> pd.DataFrame:
    """Every combination of ``levels`` (the first outermost; ``algorithm`` takes the keys of
    ``algos``), with each algorithm's family, level, label and whether it is the baseline."""
    frame = pd.DataFrame(list(itertools.product(*levels.values())), columns=list(levels), dtype=object)
    about = pd.DataFrame([(a.key, a.family, a.level, a.label, a.baseline) for a in algos],
                         columns=["algorithm", "family", "level", "label", "baseline"]).astype({"algorithm": object})
    frame = frame.merge(about, on="algorithm", how="left")
    frame["dataset_label"] = frame["dataset"].map(dataset_label)
    return frame


CELL_COLUMNS = ("dataset", "algorithm", "cell", "seed", "run_dir", "has_record", "test_accuracy", "rounds",
                "uplink_bytes_per_client_round", "dense_bytes_per_client_round")


def _cell_row(cell: Cell, record: CellRecord | None) -> dict[str, Any]:
    rounds = record.summary.rounds if record else None
    return {"dataset": cell.dataset, "algorithm": cell.algorithm.key, "cell": cell.key, "seed": cell.seed,
            "run_dir": record.run_dir if record else None, "has_record": record is not None,
            "test_accuracy": rounds.test_accuracy if rounds else None, "rounds": rounds.rounds if rounds else None,
            "uplink_bytes_per_client_round": rounds.uplink_bytes_per_client_round if rounds else None,
            "dense_bytes_per_client_round": rounds.dense_bytes_per_client_round if rounds else None}


def cell_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """One row per (dataset, algorithm) of ``cells`` (the first cell of each): its key, seed,
    run folder, whether it has a record, and the record's round numbers."""
    frame = pd.DataFrame([_cell_row(c, records.get(c.key)) for c in cells], columns=list(CELL_COLUMNS))
    frame = frame.astype({"seed": "Int64", "rounds": "Int64", "test_accuracy": float,
                          "uplink_bytes_per_client_round": float, "dense_bytes_per_client_round": float})
    return frame.drop_duplicates(["dataset", "algorithm"])


def score_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord], row_type: type) -> pd.DataFrame:
    """Every :class:`~experiments.summaries.ImageScore` or :class:`~experiments.summaries.AttackScore`
    of the cells' records, one row each, with the cell's key (column ``cell``)."""
    attr = "images" if row_type is ImageScore else "attacks"
    rows = [{"cell": c.key, **asdict(s)} for c in cells if c.key in records
            for s in getattr(records[c.key].summary, attr)]
    return pd.DataFrame(rows, columns=["cell", *(f.name for f in fields(row_type))])


def _ints(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: "Int64" for c in INT_COLUMNS if c in frame})


def _status(found: pd.Series) -> pd.Series:
    return found.eq(True).map({True: "ok", False: "missing"})


# ------------------------------------------------------------------ Table 1
def _ci_low(values: pd.Series) -> float:
    return bootstrap_mean(values.to_numpy(dtype=float)).low


def _ci_high(values: pd.Series) -> float:
    return bootstrap_mean(values.to_numpy(dtype=float)).high


def ssim_stats(images: pd.DataFrame) -> pd.DataFrame:
    """Per cell and attacker: SSIM mean, its 95% percentile-bootstrap interval
    (:func:`fedtrust.stats.bootstrap_mean`), std (population, ``ddof=0``), n and PSNR mean."""
    return (images.groupby(["cell", "attacker"], sort=False)
            .agg(ssim_mean=("ssim", _mean), ssim_low=("ssim", _ci_low), ssim_high=("ssim", _ci_high),
                 ssim_std=("ssim", _std), n=("ssim", "size"), psnr_mean=("psnr", _mean))
            .reset_index())


def _labels_of(cells: Sequence[Cell]) -> dict[str, str]:
    """Cell key -> ``attack-labels`` (given or infer) of its run config."""
    return {c.key: str(c.run_config.get("attack-labels", "given")) for c in cells}


#: What each ``attack-labels`` value means, for the captions of the tables that report SSIM.
LABEL_SENTENCES = {"given": "Labels: the attacker was given the true labels of each client's batch.",
                   "infer": ("Labels: the attacker inferred them from the update's last layer (iDLG for one "
                             "image, LLG for a batch), without the true labels.")}


def labels_caption(rows: pd.DataFrame) -> str:
    """The sentence saying whether the attacker was given or inferred the labels (both when mixed)."""
    used = [v for v in dict.fromkeys(rows.get("labels", pd.Series(dtype=object)).dropna())]
    return " ".join(LABEL_SENTENCES.get(v, f"Labels: {v}.") for v in used)


def table1_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """One row per dataset, attacker and algorithm (paper order) with SSIM mean, std, % of SGD, n."""
    gcells = _of_kind(cells, "gradinv")
    algos = _algorithms(gcells)
    rows = (grid(algos, dataset=_datasets(gcells), attacker=ATTACKERS, algorithm=[a.key for a in algos])
            .merge(cell_frame(gcells, records), on=["dataset", "algorithm"], how="left")
            .merge(ssim_stats(score_frame(gcells, records, ImageScore)), on=["cell", "attacker"], how="left"))
    rows["n"] = rows["n"].fillna(0).astype(int)
    rows["labels"] = rows["cell"].map(_labels_of(gcells))
    base = rows["ssim_mean"].where(rows["baseline"]).groupby([rows["dataset"], rows["attacker"]]).transform("first")
    rows["pct_of_sgd"] = (100.0 * rows["ssim_mean"] / base).where(base != 0)
    rows["status"] = _status(rows["has_record"])
    return _ints(rows)


TABLE1_COLUMNS = ("dataset", "attacker", "algorithm", "family", "level", "label", "ssim_mean", "ssim_low",
                  "ssim_high", "ssim_std", "pct_of_sgd", "n", "psnr_mean", "labels", "seed", "cell", "run_dir",
                  "status")

TABLE1_STATS = ("Mean", "95% CI", "Std", "% of SGD", "n")


def _interval(low: pd.Series, high: pd.Series, digits: int) -> pd.Series:
    """``[low, high]`` per row (``n/a`` where either end is missing)."""
    return pd.Series([f"[{fmt(lo, digits)}, {fmt(hi, digits)}]" if pd.notna(lo) and pd.notna(hi) else MISSING
                      for lo, hi in zip(low.astype(float), high.astype(float))], index=low.index)


def table1_wide(rows: pd.DataFrame, attacker: str) -> pd.DataFrame:
    """One attacker's block, shown: a row per algorithm label, columns ``(dataset label, statistic)``."""
    block = rows[rows["attacker"] == attacker]
    shown = pd.DataFrame({"label": block["label"], "dataset": block["dataset"],
                          "Mean": _dec(block["ssim_mean"], 4),
                          "95% CI": _interval(block["ssim_low"], block["ssim_high"], 3),
                          "Std": _dec(block["ssim_std"], 4),
                          "% of SGD": block["pct_of_sgd"].astype(float).map(fmt_pct), "n": block["n"].astype(str)})
    wide = shown.set_index(["label", "dataset"]).unstack("dataset").swaplevel(axis=1)
    datasets = list(dict.fromkeys(rows["dataset"]))
    wide = wide.reindex(columns=pd.MultiIndex.from_product([datasets, TABLE1_STATS]),
                        index=list(dict.fromkeys(block["label"]))).fillna(MISSING)
    return wide.rename(columns={d: dataset_label(d) for d in datasets}, level=0)


TABLE1_TITLES = {"naive": "Naive attacker (matches the decoded update with a dense gradient; the paper's)",
                 "adaptive": "Adaptive attacker (knows the compressor; matches what was sent)"}


def _attackers(rows: pd.DataFrame) -> list[str]:
    return [a for a in ATTACKERS if (rows["attacker"] == a).any()]


def table1_markdown(rows: pd.DataFrame) -> str:
    """Two blocks (naive, adaptive); rows = algorithms, column groups = datasets."""
    parts = []
    for attacker in _attackers(rows):
        wide = table1_wide(rows, attacker)
        header = ["Algorithm", *(f"{ds} {stat}" if stat == TABLE1_STATS[0] else stat for ds, stat in wide.columns)]
        parts.append(f"**{TABLE1_TITLES[attacker]}**\n\n" + markdown(wide.reset_index(), header))
    return "\n\n".join(parts)


def table1_tex(rows: pd.DataFrame) -> str:
    """LaTeX (booktabs): a column group per dataset, a block of rows per attacker."""
    blocks = []
    for attacker in _attackers(rows):
        wide = table1_wide(rows, attacker)
        shown = wide.reset_index(drop=True)
        shown.insert(0, ("", "Algorithm"), list(wide.index))
        shown.insert(0, ("", "Attacker"), [attacker.capitalize()] + [""] * (len(wide) - 1))
        blocks.append(shown)
    return latex(pd.concat(blocks, ignore_index=True)) if blocks else ""


TABLE1_CAPTION = ("Table 1: SSIM between each reconstructed image and its original (gradient inversion of "
                  "Geiping et al. 2020 on one-image client updates of round 1). Mean, its 95% percentile-bootstrap "
                  "interval (10,000 resamples of the n images; with n this small the interval is rough and "
                  "somewhat too narrow) and std (population, ddof=0) over the n reconstructed images; % of SGD = "
                  "mean / Original SGD's mean on the same dataset and attacker. Rows in the paper's order; Top-K "
                  "level r sends as many values as PowerSGD rank r (*).")


# ------------------------------------------------------------------ Table 2
def final_results(attacks: pd.DataFrame, scopes: Sequence[str] = BLACKBOX_SCOPES) -> pd.DataFrame:
    """The results on the final model (the last round's), per cell, attack, scope and count of
    reference models, of the attacks with these ``scopes`` (default: the black-box ones)."""
    chosen = attacks[attacks["scope"].isin(scopes)]
    keys = ["cell", "attack", "scope"] + (["reference_models"] if "reference_models" in chosen else [])
    last = chosen.groupby(keys, sort=False)["round"].idxmax()
    return chosen.loc[last.to_numpy()]


def update_means(attacks: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics of each update attack over every intercepted update of a cell (and the AUC's std)."""
    update = attacks[attacks["scope"] == "update"]
    return (update.groupby(["cell", "attack"], sort=False)
            .agg(accuracy=("accuracy", _mean), accuracy_low=("accuracy", _ci_low),
                 accuracy_high=("accuracy", _ci_high), auc=("auc", _mean), auc_low=("auc", _ci_low),
                 auc_high=("auc", _ci_high), tpr_at_1pct_fpr=("tpr_at_1pct_fpr", _mean),
                 tpr_at_0_1pct_fpr=("tpr_at_0_1pct_fpr", _mean), auc_std=("auc", _std), n=("auc", "size"),
                 members=("members", _int_mean), nonmembers=("nonmembers", _int_mean))
            .reset_index().assign(scope="update"))


def _in_order(rows: pd.DataFrame, datasets: Sequence[str], algos: Sequence[Algorithm],
              sources: Sequence[str]) -> pd.DataFrame:
    """``rows`` sorted by dataset, algorithm and source (stable: rows keep their order within)."""
    order = {"dataset": {d: i for i, d in enumerate(datasets)},
             "algorithm": {a.key: i for i, a in enumerate(algos)}, "source": {s: i for i, s in enumerate(sources)}}
    return rows.sort_values(list(order), key=lambda col: col.map(order[col.name]), kind="stable")


def table2_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """Long rows: per dataset, algorithm, source (``blackbox``/``update``), attack and scope."""
    datasets, algos = _datasets(cells), _algorithms(cells)
    keys = [a.key for a in algos]
    attacks = score_frame(cells, records, AttackScore)
    blackbox = (grid(algos, dataset=datasets, algorithm=keys, attack=BLACKBOX_ATTACKS, scope=BLACKBOX_SCOPES)
                .merge(cell_frame(_of_kind(cells, "mia"), records), on=["dataset", "algorithm"])
                .merge(final_results(attacks).assign(found=True), on=["cell", "attack", "scope"], how="left")
                .assign(source="blackbox"))
    blackbox["n"] = blackbox["found"].eq(True).astype(int)
    _candidate_intervals(blackbox)
    update = (grid(algos, dataset=datasets, algorithm=keys, attack=list(UPDATE_MIA.values()))
              .merge(cell_frame(_of_kind(cells, "update"), records), on=["dataset", "algorithm"])
              .drop(columns="test_accuracy")
              .merge(update_means(attacks).assign(found=True), on=["cell", "attack"], how="left")
              .assign(source="update", scope="update"))
    update["n"] = update["n"].fillna(0).astype(int)
    reference = _reference_rows(grid(algos, dataset=datasets, algorithm=keys)
                                .merge(cell_frame(_of_kind(cells, "mia"), records), on=["dataset", "algorithm"]),
                                attacks)
    rows = _in_order(pd.concat([blackbox, update, reference], ignore_index=True), datasets, algos,
                     ("blackbox", "update", "reference"))
    rows["status"] = _status(rows["found"])
    return _ints(rows.reset_index(drop=True))


def _reference_rows(cells: pd.DataFrame, attacks: pd.DataFrame) -> pd.DataFrame:
    """The LiRA and RMIA rows of the ``mia`` cells that ran them (none otherwise): the last
    round's, per cell, attack and reference-model count, fewest reference models first."""
    ref = final_results(attacks, scopes=("reference",))
    if ref.empty:
        return pd.DataFrame()
    ref = ref.sort_values("reference_models", kind="stable")
    rows = cells.merge(ref, on="cell", how="inner").assign(source="reference", found=True, n=1)
    return rows


def _candidate_intervals(rows: pd.DataFrame) -> None:
    """Add the black-box rows' 95% intervals (in place) over the evaluation candidates: the
    stratified bootstrap interval where ``mia.csv`` has one (the AUC's always, the balanced
    accuracy's where one threshold decides), else the AUC's Hanley-McNeil interval (cells
    from before) and the balanced accuracy's normal approximation (per-class thresholds,
    older cells; it takes TPR and TNR equal, so it is too wide where they are not)."""
    acc = [balanced_accuracy_interval(a, m, n) if f is True else (np.nan, np.nan)
           for a, m, n, f in zip(rows["accuracy"], rows["members"], rows["nonmembers"], rows["found"])]
    auc = [auc_interval(a, m, n) if f is True else (np.nan, np.nan)
           for a, m, n, f in zip(rows["auc"], rows["members"], rows["nonmembers"], rows["found"])]
    for values, names in ((acc, ("accuracy_low", "accuracy_high")), (auc, ("auc_low", "auc_high"))):
        for i, column in enumerate(names):
            fallback = pd.Series([v[i] for v in values], index=rows.index, dtype=float)
            boot = pd.to_numeric(rows[column], errors="coerce") if column in rows else fallback * np.nan
            rows[column] = boot.where(boot.notna(), fallback)


def _with_interval(values: pd.Series, low: pd.Series, high: pd.Series, percent: bool, digits: int) -> pd.Series:
    """``value [low, high]`` per row (percent: x100 with a % on the value), ``n/a`` where missing."""
    scale = 100.0 if percent else 1.0
    out = []
    for v, lo, hi in zip(values.astype(float), low.astype(float), high.astype(float)):
        if math.isnan(v):
            out.append(MISSING)
            continue
        shown = fmt_pct(scale * v) if percent else fmt(v, digits)
        out.append(shown if math.isnan(lo) or math.isnan(hi)
                   else f"{shown} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]")
    return pd.Series(out, index=values.index)


TABLE2_COLUMNS = ("dataset", "algorithm", "family", "level", "label", "source", "attack", "scope", "accuracy",
                  "accuracy_low", "accuracy_high", "auc", "auc_low", "auc_high", "auc_std", "tpr_at_1pct_fpr",
                  "tpr_at_1pct_fpr_low", "tpr_at_1pct_fpr_high", "tpr_at_0_1pct_fpr", "members", "nonmembers", "n",
                  "reference_models", "threshold", "round", "test_accuracy", "seed", "cell", "run_dir", "status")


class Results:
    """Table 2's rows by (dataset, algorithm label), in table order, to pick sub-table columns from."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.rows = rows
        self.index = pd.MultiIndex.from_product([list(dict.fromkeys(rows["dataset"])),
                                                 list(dict.fromkeys(rows["label"]))], names=["dataset", "label"])

    def first(self, field_: str, only_ok: bool = True, **match: str) -> pd.Series:
        """``field_`` of the first row matching ``match`` (and with status ``ok``), per table row (NaN if none)."""
        chosen = self.rows[self.rows["status"].eq("ok")] if only_ok else self.rows
        for column, value in match.items():
            chosen = chosen[chosen[column] == value]
        chosen = chosen.drop_duplicates(["dataset", "label"]).set_index(["dataset", "label"])
        return chosen[field_].reindex(self.index)

    def shown(self, columns: Mapping[str, pd.Series]) -> pd.DataFrame:
        """A sub-table: ``Dataset``, ``Algorithm`` and ``columns`` (strings, one per table row)."""
        datasets = pd.Series(self.index.get_level_values("dataset"))
        frame = pd.DataFrame({"Dataset": _dataset_column(datasets), "Algorithm": self.index.get_level_values("label")})
        for title, values in columns.items():
            frame[title] = values.to_numpy()
        return frame


def _estimate(res: Results, field_: str, pick: Mapping[str, str], *, percent: bool, digits: int) -> pd.Series:
    """``field_`` of the rows matching ``pick``, with its ``_low``/``_high`` interval."""
    return _with_interval(res.first(field_, **pick), res.first(f"{field_}_low", **pick),
                          res.first(f"{field_}_high", **pick), percent=percent, digits=digits)


def _accuracy_block(res: Results, scope: str) -> pd.DataFrame:
    columns = {}
    for k, a in PAPER_MIA.items():
        pick = {"source": "blackbox", "attack": a, "scope": scope}
        columns[f"{k} MIA"] = _estimate(res, "accuracy", pick, percent=True, digits=1)
    columns["Test acc."] = _pct(res.first("test_accuracy", only_ok=False, source="blackbox"))
    return res.shown(columns)


def _paper_block(res: Results) -> pd.DataFrame:
    return _accuracy_block(res, "global")


def _attacker_block(res: Results) -> pd.DataFrame:
    return _accuracy_block(res, "nonmember")


def _roc_block(res: Results) -> pd.DataFrame:
    columns = {}
    for k, a in PAPER_MIA.items():
        pick = {"source": "blackbox", "attack": a, "scope": "global"}
        columns[f"{k} AUC"] = _estimate(res, "auc", pick, percent=False, digits=3)
        columns[f"{k} TPR@1%"] = _pct(res.first("tpr_at_1pct_fpr", **pick))
        columns[f"{k} TPR@0.1%"] = _pct(res.first("tpr_at_0_1pct_fpr", **pick))
    return res.shown(columns)


def _per_class_block(res: Results) -> pd.DataFrame:
    pick = {k: {"source": "blackbox", "attack": a, "scope": "per_class"} for k, a in PAPER_MIA.items()}
    return res.shown({**{f"{k} MIA": _pct(res.first("accuracy", **p)) for k, p in pick.items()},
                      **{f"{k} AUC": _dec(res.first("auc", **p), 3) for k, p in pick.items()}})


def _update_block(res: Results) -> pd.DataFrame:
    columns = {}
    for k, a in UPDATE_MIA.items():
        pick = {"source": "update", "attack": a}
        columns[f"{k} AUC"] = _estimate(res, "auc", pick, percent=False, digits=3)
    columns["regression TPR@1%"] = _pct(res.first("tpr_at_1pct_fpr", source="update", attack=UPDATE_MIA["regression"]))
    columns["n"] = res.first("n", source="update").map(lambda v: "0" if pd.isna(v) else str(int(v)))
    return res.shown(columns)


def _reference_block(res: Results) -> pd.DataFrame:
    columns = {}
    pick = {"source": "blackbox", "attack": "loss", "scope": "global"}
    columns["Loss AUC"] = _estimate(res, "auc", pick, percent=False, digits=3)
    columns["Loss TPR@1%"] = _estimate(res, "tpr_at_1pct_fpr", pick, percent=True, digits=1)
    for k, a in REFERENCE_MIA.items():
        pick = {"source": "reference", "attack": a}
        columns[f"{k} AUC"] = _estimate(res, "auc", pick, percent=False, digits=3)
        columns[f"{k} TPR@1%"] = _estimate(res, "tpr_at_1pct_fpr", pick, percent=True, digits=1)
        columns[f"{k} ref. models"] = res.first("reference_models", **pick).map(
            lambda v: MISSING if pd.isna(v) else str(int(v)))
    return res.shown(columns)


#: Table 2's sub-tables: the rows each shows (column -> value), its title and how it is built.
TABLE2_BLOCKS: tuple[tuple[Mapping[str, str], str, Callable[[Results], pd.DataFrame]], ...] = (
    ({"source": "blackbox"}, ("Table 2: membership-inference attack success (balanced accuracy, global threshold fitted knowing "
                  "the calibration members: an oracle, as in the paper)"), _paper_block),
    ({"source": "blackbox"}, "Table 2b: AUC and TPR at 1% / 0.1% FPR (global threshold)", _roc_block),
    ({"source": "blackbox", "scope": "per_class"}, "Table 2c: per-class thresholds (balanced accuracy; AUC)", _per_class_block),
    ({"source": "update"}, ("Table 2d (beyond the paper): update attacks on intercepted FedSGD updates "
                "(AUC, mean over the n intercepted client updates)"), _update_block),
    ({"source": "reference"}, ("Table 2e (beyond the paper): reference-model attacks on the final model, LiRA (online, every "
                   "reference model) and RMIA (online, the fewest reference models run), against the loss "
                   "attack on the same candidates (AUC and TPR at 1% FPR, stratified bootstrap 95% intervals)"),
     _reference_block),
    ({"source": "blackbox", "scope": "nonmember"}, (f"Table 2f (beyond the paper): balanced accuracy at the attacker's threshold, set on "
                   f"calibration non-members alone at {ATTACKER_FPR:.0%} FPR (Tables 2 and 2c choose theirs "
                   f"knowing the calibration members: an oracle)"), _attacker_block),
)


def table2_blocks(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(title, sub-table)`` of each sub-table that has a row some cell wrote (a sub-table of
    attacks no cell ran, such as LiRA without reference models, is left out)."""
    res, written = Results(rows), rows[rows["status"].eq("ok")]
    return [(title, build(res)) for match, title, build in TABLE2_BLOCKS
            if written[list(match)].eq(pd.Series(match)).all(axis=1).any()]


def table2_markdown(rows: pd.DataFrame) -> str:
    return "\n\n".join(f"**{title}**\n\n" + markdown(frame) for title, frame in table2_blocks(rows))


def table2_tex(rows: pd.DataFrame) -> str:
    return "\n\n".join(f"% {title}\n" + latex(frame) for title, frame in table2_blocks(rows))


def table2_footnotes(rows: pd.DataFrame) -> list[str]:
    """The attacks' definitions and the candidate counts (the resolution of TPR at low FPR)."""
    notes = [MIA_FOOTNOTE]
    bb = rows[(rows["source"] == "blackbox") & (rows["status"] == "ok")]
    if not bb.empty:
        mem, non = (sorted(set(bb[c].astype(int))) for c in ("members", "nonmembers"))
        notes.append(f"Evaluation candidates per black-box attack: {'/'.join(map(str, mem))} members and "
                     f"{'/'.join(map(str, non))} non-members; a TPR at an FPR rests on floor(FPR x non-members) "
                     f"false positives: ten need 1,000 non-members at 1% and 10,000 at 0.1%, and below 1,000 the "
                     f"TPR at 0.1% is the TPR at no false positive at all.")
    if (rows["source"] == "update").any():
        notes.append("Update attacks (fedtrust.attacks.mia.update_attack): was a candidate in the client's "
                     "batch? Scored by the cosine of its gradient with the decoded update, the same cosine over "
                     "what was transmitted only (compression-aware), the loss drop of the server's step, and a "
                     "least-squares decomposition of the transmitted update on the candidates' gradients.")
        notes.append(_update_game_note(rows[(rows["source"] == "update") & (rows["status"] == "ok")]))
    return notes


def _update_game_note(update: pd.DataFrame) -> str:
    """What Table 2d's game is, with its counts, and where a stricter game takes it."""
    counts = ""
    if not update.empty:
        mem, non, n = (sorted({int(v) for v in update[c].dropna()}) for c in ("members", "nonmembers", "n"))
        counts = (f" ({'/'.join(map(str, mem))} members and {'/'.join(map(str, non))} non-members evaluated per "
                  f"update, n = {'/'.join(map(str, n))} updates)")
    return ("The game of Table 2d: the server intercepts a client's round-1 FedSGD update of an untrained model; "
            "the candidates are every member of that client's batch plus held-out test images, half of each "
            f"calibrating and half evaluated{counts}. With the whole batch among the candidates and nothing else "
            "in the update, the regression's decomposition is exact (AUC 1.000); `python -m experiments.update_game` "
            "plays stricter games (part of the batch, non-members from the client's own data, round 3 with error "
            "feedback, FedAvg, BatchNorm), where it falls (README, \"The update-attack game\").")


TABLE2_CAPTION = ("Table 2: membership-inference attacks per dataset and algorithm. Black-box attacks query the "
                  "final global model; update attacks (beyond the paper) see one client's intercepted FedSGD update. "
                  "95% intervals in brackets: for the black-box and reference-model attacks over the evaluation "
                  "candidates (stratified bootstrap of mia.csv, 1,000 resamples; Hanley & McNeil 1982 for the AUC "
                  "of cells written before mia.csv had intervals, and a normal approximation with TPR and TNR taken "
                  "equal for the balanced accuracy of those cells and of per-class thresholds), so they do not "
                  "cover a different training run; for the update "
                  "attacks a percentile bootstrap over the n intercepted client updates.")


# ------------------------------------------------------------------ trade-off
def _prefixed(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return frame.rename(columns=lambda c: c if c in ("dataset", "algorithm") else f"{prefix}{c}")


def _final_aucs(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """Per mia cell (column ``m_cell``): the final global AUC of each of the paper's attacks, and
    the strongest attack on the final model (highest AUC of every black-box and reference-model
    attack the cell ran, last round) with its AUC."""
    final = final_results(score_frame(cells, records, AttackScore), scopes=("global", "reference"))
    wide = pd.DataFrame({"m_cell": pd.Series(dtype=object)})
    for name, attack in PAPER_MIA.items():
        column = f"mia_auc_{name.lower().replace('-', '_')}"
        picked = final.loc[(final["scope"] == "global") & (final["attack"] == attack), ["cell", "auc"]]
        wide = wide.merge(picked.rename(columns={"cell": "m_cell", "auc": column}), on="m_cell", how="outer")
    pool = final.reset_index(drop=True)
    if pool.empty:
        return wide.assign(mia_auc_strongest=np.nan, mia_strongest_attack=None)
    pool = pool.assign(name=[a if int(m or 0) == 0 else f"{a} ({int(m)} ref.)"
                             for a, m in zip(pool["attack"], pool.get("reference_models", 0))])
    best = pool.loc[pool.groupby("cell", sort=False)["auc"].idxmax().to_numpy(), ["cell", "auc", "name"]]
    best = best.rename(columns={"cell": "m_cell", "auc": "mia_auc_strongest", "name": "mia_strongest_attack"})
    return wide.merge(best, on="m_cell", how="outer")


def _ssim_columns(t1: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and algorithm: both attackers' SSIM mean and interval, the naive attacker's n
    and the labels' provenance."""
    keys = ["dataset", "algorithm"]

    def of(attacker: str) -> pd.DataFrame:
        part = t1.loc[t1["attacker"] == attacker, [*keys, "ssim_mean", "ssim_low", "ssim_high"]]
        return part.rename(columns={c: c.replace("ssim_mean", "ssim").replace("ssim", f"ssim_{attacker}")
                                    for c in part.columns if c.startswith("ssim")})

    naive = of("naive").merge(t1.loc[t1["attacker"] == "naive", [*keys, "n", "labels"]], on=keys)
    return naive.rename(columns={"n": "n_images"}).merge(of("adaptive"), on=keys, how="outer")


def tradeoff_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """Per dataset and algorithm: accuracy, uplink bytes, SSIM (naive, adaptive), MIA AUC.

    Accuracy and the MIA AUC come from the mia cell; traffic from the mia cell, or the
    gradinv cell where the mia cell has no record.
    """
    algos, keys = _algorithms(cells), ["dataset", "algorithm"]
    rows = (grid(algos, dataset=_datasets(cells), algorithm=[a.key for a in algos])
            .merge(_prefixed(cell_frame(_of_kind(cells, "gradinv"), records), "g_"), on=keys, how="left")
            .merge(_prefixed(cell_frame(_of_kind(cells, "mia"), records), "m_"), on=keys, how="left")
            .merge(_ssim_columns(table1_frame(cells, records)), on=keys, how="left")
            .merge(_final_aucs(_of_kind(cells, "mia"), records), on="m_cell", how="left"))
    mia, gradinv = rows["m_has_record"].eq(True), rows["g_has_record"].eq(True)
    for column in ("uplink_bytes_per_client_round", "dense_bytes_per_client_round"):
        rows[column] = rows[f"m_{column}"].where(mia, rows[f"g_{column}"])
    uplink, dense = rows["uplink_bytes_per_client_round"], rows["dense_bytes_per_client_round"]
    rows["compression"] = (dense / uplink).where(uplink.fillna(0).ne(0) & dense.fillna(0).ne(0))
    rows = rows.assign(test_accuracy=rows["m_test_accuracy"], rounds=rows["m_rounds"],
                       seed=rows["g_seed"].fillna(rows["m_seed"]), gradinv_cell=rows["g_cell"], mia_cell=rows["m_cell"])
    rows["status"] = _status((gradinv | rows["g_cell"].isna()) & (mia | rows["m_cell"].isna()))
    return _ints(rows)


TRADEOFF_COLUMNS = ("dataset", "algorithm", "family", "level", "label", "test_accuracy", "rounds",
                    "uplink_bytes_per_client_round", "dense_bytes_per_client_round", "compression",
                    "ssim_naive", "ssim_naive_low", "ssim_naive_high", "ssim_adaptive", "ssim_adaptive_low",
                    "ssim_adaptive_high", "n_images", "labels", "mia_auc_prediction", "mia_auc_loss",
                    "mia_auc_cross_entropy", "mia_auc_strongest", "mia_strongest_attack", "seed", "gradinv_cell",
                    "mia_cell", "status")


def tradeoff_shown(rows: pd.DataFrame) -> pd.DataFrame:
    """The trade-off as shown: a row per dataset and algorithm, formatted."""
    return pd.DataFrame({
        "Dataset": _dataset_column(rows["dataset"]), "Algorithm": rows["label"],
        "Test acc.": _pct(rows["test_accuracy"]),
        "Uplink / client / round": rows["uplink_bytes_per_client_round"].astype(float).map(fmt_bytes),
        "Compression": rows["compression"].astype(float).map(lambda v: MISSING if math.isnan(v) else f"{v:.1f}x"),
        "SSIM naive": _dec(rows["ssim_naive"], 4),
        "95% CI": _interval(rows["ssim_naive_low"], rows["ssim_naive_high"], 3),
        "SSIM adaptive": _dec(rows["ssim_adaptive"], 4),
        "95% CI ": _interval(rows["ssim_adaptive_low"], rows["ssim_adaptive_high"], 3),
        "MIA AUC (loss)": _dec(rows["mia_auc_loss"], 3),
        "MIA AUC (strongest)": [MISSING if pd.isna(v) else f"{v:.3f} ({a})"
                                for v, a in zip(rows["mia_auc_strongest"].astype(float), rows["mia_strongest_attack"])]})


def tradeoff_markdown(rows: pd.DataFrame) -> str:
    return "**Privacy-utility-communication trade-off**\n\n" + markdown(tradeoff_shown(rows))


def tradeoff_tex(rows: pd.DataFrame) -> str:
    return latex(tradeoff_shown(rows))


TRADEOFF_CAPTION = ("Test accuracy of the model trained by FedAvg (mia cells, final round); uplink = bytes one "
                    "client sends in one round (both PowerSGD all-reduce exchanges; Top-K values + int32 "
                    "indices), compression = dense float32 bytes / uplink; SSIM = mean over the reconstructed "
                    "images (gradinv cells) with its 95% percentile-bootstrap interval; MIA AUC = loss attack on the final model, "
                    "global threshold (the paper's), and the strongest attack on the final model (highest AUC of "
                    "every black-box and, where the cell ran them, LiRA/RMIA attack; the largest of several AUCs "
                    "measured on the same candidates, so it leans high).")


# ------------------------------------------------------------------ the tables and their files
@dataclass(frozen=True)
class Table:
    """One table: its file name, CSV columns, how its rows are computed and shown, and its caption."""

    name: str
    columns: tuple[str, ...]
    rows: Callable[[Sequence[Cell], Mapping[str, CellRecord]], pd.DataFrame]
    markdown: Callable[[pd.DataFrame], str]
    tex: Callable[[pd.DataFrame], str]
    caption: str
    notes: Callable[[pd.DataFrame], list[str]] = lambda rows: []
    caption_of_rows: Callable[[pd.DataFrame], str] = lambda rows: ""

    def full_caption(self, rows: pd.DataFrame) -> str:
        """The caption with what depends on the rows (the labels' provenance)."""
        extra = self.caption_of_rows(rows)
        return f"{self.caption} {extra}" if extra else self.caption


TABLE1 = Table("table1", TABLE1_COLUMNS, table1_frame, table1_markdown, table1_tex, TABLE1_CAPTION,
               caption_of_rows=labels_caption)
TABLE2 = Table("table2", TABLE2_COLUMNS, table2_frame, table2_markdown, table2_tex, TABLE2_CAPTION,
               table2_footnotes)
TRADEOFF = Table("tradeoff", TRADEOFF_COLUMNS, tradeoff_frame, tradeoff_markdown, tradeoff_tex, TRADEOFF_CAPTION,
                 caption_of_rows=labels_caption)


def write_csv(path: Path, rows: pd.DataFrame, columns: Sequence[str]) -> Path:
    """Rows as CSV with the given columns (missing values empty; CRLF line ends, as RFC 4180)."""
    rows.reindex(columns=list(columns)).to_csv(path, index=False, lineterminator="\r\n")
    return path


def write_table(table: Table, rows: pd.DataFrame, *, out: Path, meta: TableMeta, cells: Sequence[Cell],
                records: Mapping[str, CellRecord], defaults: Mapping[str, Any],
                extra_files: Sequence[Path] = ()) -> list[Path]:
    """Write ``<name>.csv``, ``.md``, ``.tex`` and ``.json`` of ``table``'s ``rows`` in ``out``.

    The Markdown and LaTeX files end with the footer (seed, configuration, command);
    the CSV has a ``seed`` and a ``cell`` column, and the JSON sidecar every cell's full config.
    """
    foot, notes = footer(meta, cells, records, defaults), table.notes(rows)
    csv_path = write_csv(out / f"{table.name}.csv", rows, table.columns)
    md_path = out / f"{table.name}.md"
    caption = table.full_caption(rows)
    md_path.write_text(f"{table.markdown(rows)}\n\n{caption}\n\n" + "".join(f"{n}\n\n" for n in notes)
                       + "\n".join(f"_{line}_  " for line in foot) + "\n")
    tex_path = out / f"{table.name}.tex"
    tex_path.write_text("% " + caption.replace("\n", " ") + "\n" + "".join(f"% {n}\n" for n in notes)
                        + "".join(f"% {line}\n" for line in foot) + table.tex(rows) + "\n")
    files = [csv_path, md_path, tex_path, *extra_files]
    json_path = sidecar(meta, cells, records, defaults, out / f"{table.name}.json", files)
    return [*files, json_path]

"""Table 1 with given labels beside inferred ones: two ``table1.csv`` files side by side.

``python -m experiments.table1`` writes one label setting per sweep folder (its caption
says which). This script reads the ``table1.csv`` of a sweep run with the true labels
given (``attack-labels = "given"``, the default) and of one run with them inferred
(``--set "gradinv:attack-labels='infer'"``) and writes ``table1_labels.{csv,md,tex}`` in
``--out``: per algorithm, each attacker's mean SSIM with its 95% interval under both
settings. It computes nothing new: every number is one of the two files'.

Usage::

    python -m experiments.compare_labels --given docs/cpu-results/table1.csv \\
        --inferred docs/cpu-results/labels-inferred/table1.csv --out docs/cpu-results
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.tables import MISSING, latex
from fedtrust.markdown import markdown

SETTINGS = ("given", "inferred")


def _shown(row: pd.Series) -> str:
    if pd.isna(row.ssim_mean):
        return MISSING
    if pd.isna(row.ssim_low):
        return f"{row.ssim_mean:.3f}"
    return f"{row.ssim_mean:.3f} [{row.ssim_low:.3f}, {row.ssim_high:.3f}]"


def side_by_side(given: pd.DataFrame, inferred: pd.DataFrame) -> pd.DataFrame:
    """Long rows (dataset, algorithm, attacker, labels, SSIM mean and interval) of both files."""
    frames = []
    for setting, frame in zip(SETTINGS, (given, inferred)):
        expected = "given" if setting == "given" else "infer"
        found = set(frame["labels"].dropna()) if "labels" in frame else {"given"}
        if found != {expected}:
            raise ValueError(f"the {setting}-labels file has attack-labels {sorted(found)}; expected {expected!r}")
        frames.append(frame.assign(setting=setting))
    return pd.concat(frames, ignore_index=True)[["dataset", "label", "attacker", "setting", "ssim_mean", "ssim_low",
                                                 "ssim_high", "n"]]


def wide(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per dataset and algorithm; a column per attacker and label setting."""
    rows = rows.assign(shown=[_shown(r) for r in rows.itertuples()])
    table = rows.pivot_table(index=["dataset", "label"], columns=["attacker", "setting"], values="shown",
                             aggfunc="first", sort=False)
    order = [(a, s) for a in ("naive", "adaptive") for s in SETTINGS if (a, s) in table.columns]
    table = table.reindex(columns=order).fillna(MISSING)
    table.columns = [f"{a}, labels {s}" for a, s in order]
    return table.reset_index().rename(columns={"dataset": "Dataset", "label": "Algorithm"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--given", type=Path, required=True, help="table1.csv of a sweep with the labels given")
    parser.add_argument("--inferred", type=Path, required=True, help="table1.csv of a sweep with them inferred")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = side_by_side(pd.read_csv(args.given), pd.read_csv(args.inferred))
    args.out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out / "table1_labels.csv", index=False)
    shown = wide(rows)
    note = (f"SSIM, mean [95% bootstrap interval] over the reconstructed images, from {args.given} (labels given "
            f"to the attacker) and {args.inferred} (labels inferred from the update: iDLG for one image); their "
            f"footers give the commands, commit and seed.")
    (args.out / "table1_labels.md").write_text(markdown(shown) + f"\n\n{note}\n")
    (args.out / "table1_labels.tex").write_text(latex(shown) + f"\n% {note}\n")
    print(markdown(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Membership inference where membership is at stake: threshold attacks against LiRA and RMIA.

The paper's Table 2 uses threshold attacks on models that barely overfit and concludes
that "MIA may not be a reliable metric". This script trains a FedAvg ConvNet on the
embedded sample long enough to overfit (3 clients of 100 images each, 30 rounds of 10
local epochs; ``SETTING``), once per seed, each a real ``flwr run`` simulation with
``mia-reference-models`` reference models, and tabulates every attack of ``mia.csv``:
the black-box threshold attacks (loss, confidence, entropy, modified entropy; global
thresholds, fitted the oracle's way on calibration candidates of known membership) and
LiRA and RMIA (thresholds from a reference model playing the target), all measured on
the same evaluation candidates (150 members, 150 non-members per seed).

Outputs in ``--out``: ``runs/seed<S>/`` (each run folder; a finished one is reused,
so an interrupted sweep resumes), ``reference_mia_rows.csv`` (every row of every
seed), ``reference_mia.{csv,md,tex}`` (per attack: mean over seeds of AUC, TPR at 1%
FPR and balanced accuracy, with the range over seeds and the mean of the per-seed
bootstrap intervals) and the ROC figure of the first seed (``roc.png``, log-log).

Usage::

    python -m experiments.reference_mia --out docs/reference-mia [--seeds 42 43 44] [--reference-models 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.flwr_runner import LocalSuperLink
from experiments.profiles import OVERFIT_MIA
from experiments.tables import latex
from fedtrust.markdown import markdown

#: The overfitting FedAvg setting (run-config overrides; the ``overfit`` profile's MIA cell, uncompressed).
SETTING = {**{k: v for k, v in OVERFIT_MIA.items() if k != "mia-reference-models"}, "dataset": "sample",
           "local-mode": "fedavg", "compressor": "none", "attack": "none", "intercept-rounds": "none",
           "intercept-clients": "none", "mia": True, "eval-samples": 500}
#: Attacks in the table (black-box ones with their global threshold).
ATTACK_ORDER = ("loss", "confidence", "entropy", "modified_entropy", "lira_online", "lira_offline",
                "rmia_online", "rmia_offline")


def run_seeds(out: Path, seeds: Sequence[int], reference_models: int, timeout: float) -> list[Path]:
    """One ``flwr run`` per seed (a finished run folder is reused); the run folders."""
    runs = out / "runs"
    folders = []
    todo = [s for s in seeds if not (runs / f"seed{s}" / "finished.json").is_file()]
    print(f"reference_mia: {len(seeds)} seed(s), {len(seeds) - len(todo)} finished before, {len(todo)} to run",
          flush=True)
    with LocalSuperLink() as link:
        for i, seed in enumerate(seeds, 1):
            folder = runs / f"seed{seed}"
            folders.append(folder)
            if seed not in todo:
                continue
            if folder.exists():
                shutil.rmtree(folder)  # an interrupted run: start it again
            cfg = {**SETTING, "seed": seed, "mia-reference-models": reference_models, "output-dir": str(runs),
                   "run-name": f"seed{seed}"}
            started = time.monotonic()
            outcome = link.run_app(run_config=cfg, num_supernodes=3, timeout=timeout)
            print(f"  [{i}/{len(seeds)}] seed {seed}: {outcome.status} in {time.monotonic() - started:.0f} s",
                  flush=True)
            if not outcome.ok:
                raise RuntimeError(f"seed {seed}: {outcome.status} {outcome.details}\n{outcome.log[-3000:]}")
    return folders


def collect(folders: Sequence[Path]) -> pd.DataFrame:
    """Every final-model row of every seed's ``mia.csv``, with the seed and the final accuracy."""
    frames = []
    for folder in folders:
        rows = pd.read_csv(folder / "mia.csv")
        rounds = pd.read_csv(folder / "rounds.csv")
        rows = rows[rows["client"].isna() & rows["scope"].isin(["global", "reference"])].copy()
        rows["test_accuracy"] = float(rounds["test_accuracy"].iloc[-1])
        rows["train_loss"] = float(rounds["train_loss"].iloc[-1])
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per attack and reference-model count: means over seeds, ranges, mean interval ends."""
    grouped = rows.groupby(["attack", "reference_models", "threshold"], sort=False)
    table = grouped.agg(seeds=("seed", "nunique"), auc=("auc", "mean"), auc_min=("auc", "min"),
                        auc_max=("auc", "max"), auc_low=("auc_low", "mean"), auc_high=("auc_high", "mean"),
                        tpr_1pct=("tpr_at_1pct_fpr", "mean"), tpr_1pct_min=("tpr_at_1pct_fpr", "min"),
                        tpr_1pct_max=("tpr_at_1pct_fpr", "max"), tpr_1pct_low=("tpr_at_1pct_fpr_low", "mean"),
                        tpr_1pct_high=("tpr_at_1pct_fpr_high", "mean"), accuracy=("accuracy", "mean"),
                        members=("members", "first"), nonmembers=("nonmembers", "first")).reset_index()
    order = {a: i for i, a in enumerate(ATTACK_ORDER)}
    table["_order"] = table["attack"].map(order)
    return table.sort_values(["_order", "reference_models"], ascending=[True, False]).drop(columns="_order")


def _span(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} ({low:.3f}-{high:.3f})"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as printed (strings)."""
    span = _span
    return pd.DataFrame({
        "Attack": table["attack"],
        "Reference models": table["reference_models"].map(lambda m: "-" if m == 0 else str(m)),
        "Threshold": table["threshold"],
        "AUC (seed range)": [span(r.auc, r.auc_min, r.auc_max) for r in table.itertuples()],
        "AUC 95% CI (mean ends)": [f"[{r.auc_low:.3f}, {r.auc_high:.3f}]" for r in table.itertuples()],
        "TPR @ 1% FPR (seed range)": [span(r.tpr_1pct, r.tpr_1pct_min, r.tpr_1pct_max) for r in table.itertuples()],
        "Balanced acc.": table["accuracy"].map(lambda v: f"{v:.3f}"),
    })


def render(table: pd.DataFrame, rows: pd.DataFrame, command: str) -> str:
    """The Markdown table with its caption."""
    seeds = sorted(rows["seed"].unique())
    acc = rows.groupby("seed")["test_accuracy"].first()
    loss = rows.groupby("seed")["train_loss"].first()
    non = int(table["nonmembers"].iloc[0])
    return (markdown(shown(table)) + "\n\n"
            f"Membership inference on an overfitting FedAvg ConvNet (embedded sample; {len(seeds)} seeds "
            f"{', '.join(map(str, seeds))}; final test accuracy {acc.mean():.3f}, last round's train loss "
            f"{loss.mean():.3f}). Every attack on the same {int(table['members'].iloc[0])} members and {non} "
            f"non-members per seed. Threshold: oracle = fitted on calibration candidates of known membership "
            f"(no real attacker has them: an upper bound on the threshold attacks' accuracy); shadow = fitted on a "
            f"reference model playing the target. CI = stratified bootstrap over the evaluated candidates "
            f"(1,000 resamples), averaged over seeds; it covers the candidates' sampling, not training. "
            f"{non} non-members allow {int(0.01 * non)} false positive(s) at 1% FPR: the TPR there is not "
            f"resolved (1,000 non-members are needed for 10).\n\n_Command: `{command}`._\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/reference-mia"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--reference-models", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take")
    args = parser.parse_args(argv)
    if args.reference_models < 2:
        parser.error("--reference-models must be >= 2 (a shadow target and its references)")
    args.out.mkdir(parents=True, exist_ok=True)
    folders = run_seeds(args.out, args.seeds, args.reference_models, args.timeout)
    rows = collect(folders)
    rows.to_csv(args.out / "reference_mia_rows.csv", index=False)
    table = summarise(rows)
    table.to_csv(args.out / "reference_mia.csv", index=False)
    (args.out / "reference_mia.tex").write_text(latex(shown(table), labels=3) + "\n")
    command = "python -m experiments.reference_mia " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "reference_mia.md").write_text(render(table, rows, command.strip()))
    roc = folders[0] / "mia_roc.png"
    if roc.is_file():
        shutil.copy(roc, args.out / "roc.png")
    print((args.out / "reference_mia.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

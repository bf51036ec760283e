"""SSIM against attack iterations for uncompressed SGD: how many iterations a profile needs.

A profile's attack budget is enough when the attack on plain SGD updates (the easiest
target) has stopped improving: a compressed update can then not look safer merely
because the attack was cut short. For each budget in ``--iterations`` (each a full run
with its own step-decay schedule, as a profile would run it) the ConvNet's round-1
FedSGD gradients of ``--images`` clients (one embedded-sample image each, seed
``--seed``) are inverted by Geiping et al.'s attack, labels given. Outputs in
``--out``: ``convergence.{csv,md}`` (mean SSIM per budget with a bootstrap 95%
interval over images) and ``convergence.png``.

Usage::

    python -m experiments.convergence --out docs/cpu-results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from experiments.attackers import client_images, invert, observe
from experiments.profiles import Algorithm
from fedtrust.attacks.gradinv import GradInvConfig
from fedtrust.data.loading import load_dataset, normalize
from fedtrust.markdown import markdown
from fedtrust.metrics import score_batch
from fedtrust.models import get_model
from fedtrust.stats import bootstrap_mean


def curve(args: argparse.Namespace) -> pd.DataFrame:
    """One row per budget and image: SSIM of the naive attack on uncompressed updates."""
    dataset = load_dataset("sample", "train").spec
    torch.manual_seed(args.seed)
    model = get_model("convnet", num_classes=dataset.num_classes, in_channels=dataset.channels)
    truth, y = client_images("sample", args.seed, args.images, dataset)
    observed, spec = observe(model, normalize(truth, dataset), y, Algorithm("sgd"), args.seed, "eval")
    rows = []
    for budget in tqdm(args.iterations, desc="convergence"):
        config = GradInvConfig(iterations=budget, tv_weight=args.tv_weight, seed=args.seed)
        for i, rec in enumerate(invert(model, observed, spec, y, "naive", config, dataset)):
            rows.append({"iterations": budget, "image": i, "ssim": float(score_batch(rec.images, truth[i:i + 1])[0]["ssim"]),
                         "loss": rec.loss, "seed": args.seed})
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for budget, group in rows.groupby("iterations"):
        est = bootstrap_mean(group.ssim)
        out.append({"iterations": int(budget), "n": est.n, "ssim": est.mean, "ssim_low": est.low,
                    "ssim_high": est.high, "matching_loss": float(group.loss.mean())})
    return pd.DataFrame(out)


def figure(summary: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(5, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(summary.iterations, summary.ssim, marker="o")
    ax.fill_between(summary.iterations, summary.ssim_low, summary.ssim_high, alpha=0.25, label="95% CI")
    ax.set_xscale("log")
    ax.set_xlabel("attack iterations")
    ax.set_ylabel("SSIM (uncompressed SGD)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, nargs="+", default=[50, 100, 200, 300, 500, 1000, 2000])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tv-weight", type=float, default=1e-4)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = curve(args)
    summary = summarise(rows)
    summary.to_csv(args.out / "convergence.csv", index=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    shown = summary.assign(ssim=[bootstrap_mean(g.ssim).text() for _, g in rows.groupby("iterations")])
    shown = shown[["iterations", "n", "ssim", "matching_loss"]].rename(
        columns={"ssim": "SSIM, mean [95% CI]", "matching_loss": "matching loss"})
    shown["matching loss"] = shown["matching loss"].map(lambda v: f"{v:.2e}")
    footer = (f"ConvNet (seed {args.seed}), {args.images} embedded-sample images (one per client), uncompressed "
              f"FedSGD round-1 gradients, naive attacker, labels given, TV {args.tv_weight}. Command: python -m "
              f"experiments.convergence {' '.join(sys.argv[1:])}; commit {commit}.")
    (args.out / "convergence.md").write_text(markdown(shown) + f"\n\n{footer}\n")
    figure(summary, args.out / "convergence.png")
    print(markdown(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

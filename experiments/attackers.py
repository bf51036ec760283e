"""Naive against adaptive gradient inversion, per compressor, with intervals (no Flower run).

Each seed builds the ConvNet as the ServerApp does (``torch.manual_seed(seed)``), gives
``--images`` clients one image each, computes their round-1 FedSGD gradients and sends
them through one round of each compressor's protocol in one process
(:func:`fedtrust.compression.rounds.run_round`: the server's answers included, so
PowerSGD all-reduce's P-hat mixes every client's P as in a simulation). Then each
attacker inverts every client's update, batched:

``naive``
    the decoded update taken as the gradient (the paper's attacker);
``adaptive``
    what was sent, through the codec's views and bounds, with the naive objective as
    extra starts judged by its own cost (the default of
    :class:`~fedtrust.attacks.gradinv.GradInvConfig`, ``naive_start=True``);
``adaptive-own``
    the adaptive attacker without the naive starts (the ablation).

Images come from the embedded sample (a seed's own draw of the train split) and from
held-out photos (:mod:`fedtrust.data.photos`: the same pictures for every seed, labels
``i mod 10``). Labels are given to the attacker. Outputs in ``--out``: ``rows.csv`` (one
row per image, attacker, algorithm, source and seed; an interrupted run resumes from it
without repeating a row), ``attackers.{csv,md,tex}`` (means with two-stage bootstrap 95%
intervals over seeds and images, and the adaptive-minus-naive difference per image) and
``attackers.png``.

Usage::

    python -m experiments.attackers --out docs/attackers              # 8 images x 3 seeds
    python -m experiments.attackers --seeds 0 --images 2 --iterations 20 --out /tmp/a
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from experiments.profiles import SMOKE, Algorithm
from experiments.tables import latex
from fedtrust.attacks.gradinv import GradInvConfig, Problem, reconstruct_batch
from fedtrust.attacks.gradinv.targets import build_views, surrogate_views
from fedtrust.compression import get_codec
from fedtrust.compression.registry import spec_from_run_config
from fedtrust.compression.rounds import Observed, run_round
from fedtrust.config_keys import defaults
from fedtrust.data.loading import denormalize, load_dataset, normalize
from fedtrust.data.photos import photos
from fedtrust.data.specs import DatasetSpec
from fedtrust.markdown import markdown
from fedtrust.metrics import score_batch
from fedtrust.models import get_model
from fedtrust.records import append_rows, read_rows
from fedtrust.stats import bootstrap_mean
from fedtrust.training import batch_gradient, model_layout

#: Attacker variant -> (attacker, naive_start).
VARIANTS = {"naive": ("naive", False), "adaptive": ("adaptive", True), "adaptive-own": ("adaptive", False)}
SOURCES = ("sample", "photos")
ROWS_CSV = "rows.csv"


@dataclass(frozen=True)
class AttackerRow:
    """One reconstructed image (``rows.csv``)."""

    source: str
    seed: int
    algorithm: str
    attacker: str
    image: int
    label: int
    ssim: float
    psnr: float
    kept: str
    iterations: int
    seconds: float


def client_images(source: str, seed: int, count: int, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixels in [0, 1], labels)`` of the ``count`` clients' images for one seed."""
    if source == "photos":
        return photos(count, spec.image_size, spec.channels), torch.arange(count) % spec.num_classes
    if source != "sample":
        raise ValueError(f"source={source!r} is not known; allowed: {', '.join(SOURCES)}")
    data = load_dataset("sample", "train")
    pick = np.random.default_rng(seed).choice(len(data.labels), count, replace=False)
    x, y = data.to_tensors(pick)
    return denormalize(x, spec).clamp(0.0, 1.0), y


def observe(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, algorithm: Algorithm,
            seed: int, mode: str) -> tuple[list[Observed], object]:
    """One round of ``algorithm`` with one client per image; what the server holds of each."""
    layout = model_layout(model)
    updates = []
    for i in range(len(y)):
        grads, _ = batch_gradient(model, x[i:i + 1], y[i:i + 1], mode)
        updates.append({n: grads[n].float() for n, _ in layout})
    spec = spec_from_run_config({**defaults(), **algorithm.run_config(), "seed": seed})
    return run_round(get_codec(spec, layout), updates), spec


def invert(model: torch.nn.Module, observed: Sequence[Observed], spec: object, y: torch.Tensor, variant: str,
           config: GradInvConfig, dataset: DatasetSpec) -> list:
    """Every client's update inverted by one attacker variant (batched)."""
    attacker, naive_start = VARIANTS[variant]
    layout = model_layout(model)
    problems = []
    for i, obs in enumerate(observed):
        seen = dict(decoded=obs.decoded, arrays=obs.arrays, spec=spec, public_state=obs.public_state)
        views = tuple(build_views(attacker, layout, **seen))
        extra = surrogate_views(attacker, layout, views, **seen) if naive_start else ()
        problems.append(Problem(views=views, labels=y[i:i + 1], surrogates=extra))
    return reconstruct_batch(model, problems, config=config, dataset=dataset, device=torch.device("cpu"),
                             progress=False)


def run_combination(source: str, seed: int, algorithm: Algorithm, variants: Sequence[str], args: argparse.Namespace,
                    dataset: DatasetSpec) -> list[AttackerRow]:
    """Rows of every variant for one (source, seed, algorithm)."""
    torch.manual_seed(seed)
    model = get_model(args.model, num_classes=dataset.num_classes, in_channels=dataset.channels)
    truth, y = client_images(source, seed, args.images, dataset)
    observed, spec = observe(model, normalize(truth, dataset), y, algorithm, seed, args.model_mode)
    config = GradInvConfig(iterations=args.iterations, restarts=args.restarts, tv_weight=args.tv_weight, seed=seed,
                           model_mode=args.model_mode)
    rows = []
    for variant in variants:
        start = time.perf_counter()
        recs = invert(model, observed, spec, y, variant, config, dataset)
        seconds = (time.perf_counter() - start) / len(recs)
        for i, rec in enumerate(recs):
            score = score_batch(rec.images, truth[i:i + 1])[0]
            rows.append(AttackerRow(source, seed, algorithm.key, variant, i, int(y[i]), float(score["ssim"]),
                                    float(score["psnr"]), "naive" if rec.objective else "own", args.iterations,
                                    round(seconds, 3)))
    return rows


def done_keys(path: Path) -> set[tuple[str, int, str, str]]:
    """``(source, seed, algorithm, attacker)`` combinations already in ``rows.csv``."""
    if not path.exists():
        return set()
    return {(r.source, r.seed, r.algorithm, r.attacker) for r in read_rows(path, AttackerRow)}


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean SSIM with its interval per (source, algorithm, attacker), and the paired
    difference from the naive attacker (per image and seed) with its interval."""
    out = []
    naive = rows[rows.attacker == "naive"].set_index(["source", "algorithm", "seed", "image"]).ssim
    for (source, algo, attacker), group in rows.groupby(["source", "algorithm", "attacker"], sort=False):
        mean = bootstrap_mean(group.ssim, groups=group.seed)
        keyed = group.set_index(["source", "algorithm", "seed", "image"]).ssim
        diff = (keyed - naive.reindex(keyed.index)).dropna()
        delta = bootstrap_mean(diff, groups=diff.index.get_level_values("seed"))
        out.append({"source": source, "algorithm": algo, "attacker": attacker, "n": mean.n,
                    "ssim": mean.mean, "ssim_low": mean.low, "ssim_high": mean.high,
                    "minus_naive": delta.mean, "minus_naive_low": delta.low, "minus_naive_high": delta.high,
                    "naive_start_kept": float((group.kept == "naive").mean())})
    frame = pd.DataFrame(out)
    order = {"source": {s: i for i, s in enumerate(SOURCES)}, "attacker": {v: i for i, v in enumerate(VARIANTS)},
             "algorithm": {a: Algorithm.parse(a).sort_key for a in frame.algorithm}}
    return frame.sort_values(["source", "algorithm", "attacker"], key=lambda c: c.map(order[c.name])
                             ).reset_index(drop=True)


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as display text: SSIM and difference with their intervals."""
    def ci(m: float, lo: float, hi: float) -> str:
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"

    view = summary[["source", "algorithm", "attacker", "n"]].copy()
    view["algorithm"] = view.algorithm.map(lambda k: Algorithm.parse(k).label)
    view["SSIM, mean [95% CI]"] = [ci(r.ssim, r.ssim_low, r.ssim_high) for r in summary.itertuples()]
    view["minus naive [95% CI]"] = [ci(r.minus_naive, r.minus_naive_low, r.minus_naive_high)
                                    if r.attacker != "naive" else "" for r in summary.itertuples()]
    view["naive start kept"] = [f"{k:.0%}" if r.attacker == "adaptive" else "" for k, r in
                                zip(summary.naive_start_kept, summary.itertuples())]
    return view


def figure(summary: pd.DataFrame, path: Path) -> None:
    """Mean SSIM with its interval per algorithm, one panel per source, one bar per attacker."""
    sources = list(dict.fromkeys(summary.source))
    fig = Figure(figsize=(5.5 * len(sources), 3.8))
    FigureCanvasAgg(fig)
    for k, source in enumerate(sources):
        ax = fig.add_subplot(1, len(sources), k + 1)
        part = summary[summary.source == source]
        algos = list(dict.fromkeys(part.algorithm))
        attackers = list(dict.fromkeys(part.attacker))
        width = 0.8 / len(attackers)
        for j, attacker in enumerate(attackers):
            rows = part[part.attacker == attacker].set_index("algorithm").reindex(algos)
            err = np.vstack([rows.ssim - rows.ssim_low, rows.ssim_high - rows.ssim]).clip(min=0)
            ax.bar(np.arange(len(algos)) + (j - (len(attackers) - 1) / 2) * width, rows.ssim, width,
                   yerr=err, capsize=2, label=attacker)
        ax.set_xticks(np.arange(len(algos)), [Algorithm.parse(a).tag for a in algos])
        ax.set_ylim(0, 1)
        ax.set_title(f"{source} images")
        ax.set_ylabel("SSIM (mean, 95% CI)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(out: Path, rows: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """``attackers.{csv,md,tex}`` and ``attackers.png`` from every row so far."""
    summary = summarise(rows)
    summary.to_csv(out / "attackers.csv", index=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    footer = (f"ConvNet ({args.model}), {args.images} images per seed, seeds {' '.join(map(str, args.seeds))}, "
              f"{args.iterations} iterations, {args.restarts} restart(s), TV {args.tv_weight}, labels given, "
              f"model mode {args.model_mode}; 95% two-stage bootstrap intervals (seeds, then images). "
              f"Command: python -m experiments.attackers {' '.join(sys.argv[1:])}; commit {commit}.")
    view = display_frame(summary)
    (out / "attackers.md").write_text(markdown(view) + f"\n\n{footer}\n")
    (out / "attackers.tex").write_text(latex(view, labels=3) + f"\n% {footer}\n")
    figure(summary, out / "attackers.png")
    return view


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed when it holds rows.csv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=8, help="clients (one image each) per seed and source")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--tv-weight", type=float, default=1e-4)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--algorithms", nargs="+", default=[a.key for a in SMOKE.algorithms],
                        help="algorithm keys (default: the smoke grid)")
    parser.add_argument("--attackers", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--model-mode", default="eval", choices=("train", "eval"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("sample", "train").spec
    path = args.out / ROWS_CSV
    done = done_keys(path)
    todo = [(s, seed, Algorithm.parse(a)) for s in args.sources for seed in args.seeds for a in args.algorithms]
    for source, seed, algo in tqdm(todo, desc="attackers"):
        variants = [v for v in args.attackers if (source, seed, algo.key, v) not in done]
        if variants:
            append_rows(path, run_combination(source, seed, algo, variants, args, dataset))
    rows = pd.DataFrame([asdict(r) for r in read_rows(path, AttackerRow)])
    print(markdown(write_outputs(args.out, rows, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

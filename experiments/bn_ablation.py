"""BatchNorm mode ablation: is a ResNet-18 FedSGD gradient inverted when it was computed in
train mode (batch statistics) or in eval mode (running statistics)?

The model is the paper's ResNet-18 (untrained, seeded: the global model of round 1, whose
running statistics are still at their initial values). A client computes the gradient of
one image, or of a batch of ``--batch`` images, with the model in ``train`` or ``eval``
mode (``client-model-mode``); the attacker, knowing the mode, inverts the uncompressed
update with Geiping et al.'s attack in the same mode. The images are held-out photos
(:mod:`fedtrust.data.photos`, 32x32 RGB, CIFAR-10 normalisation), the labels given.

This is the scale a 2-core CPU allows: ``--iterations`` (default 300) instead of the
paper's 24,000, so the absolute SSIM is far below a converged attack's; the question is
the gap between the modes. Outputs in ``--out``: ``bn_ablation_rows.csv`` (one row per
reconstructed image), ``bn_ablation.{csv,md,tex}`` (mean SSIM per case and mode with a
bootstrap 95% interval over images) and ``bn_ablation.png`` (the originals and both
modes' reconstructions, with SSIM).

Usage::

    python -m experiments.bn_ablation --out docs/bn-ablation
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from experiments.tables import latex
from fedtrust.attacks.gradinv import GradInvConfig, Problem, reconstruct_batch
from fedtrust.attacks.gradinv.targets import naive_views
from fedtrust.data.loading import normalize
from fedtrust.data.photos import photos
from fedtrust.data.specs import get_spec
from fedtrust.markdown import markdown
from fedtrust.metrics import score_batch
from fedtrust.models import get_model
from fedtrust.stats import bootstrap_mean
from fedtrust.training import MODEL_MODES, batch_gradient, model_layout

SPEC = get_spec("cifar10")


def cases(count: int, batch: int) -> list[tuple[str, list[int]]]:
    """``(case, photo indices)``: each of the first ``count`` photos alone, then one batch."""
    return [(f"one image ({i})", [i]) for i in range(count)] + [(f"batch of {batch}", list(range(batch)))]


def attack_case(model: torch.nn.Module, truth: torch.Tensor, labels: torch.Tensor, mode: str,
                config: GradInvConfig) -> tuple[torch.Tensor, list[dict[str, float | int]]]:
    """The client's gradient in ``mode`` on a copy of the global model, inverted in ``mode``:
    the reconstructions and their scores, both in the order of the true images they match."""
    client = copy.deepcopy(model)  # train mode updates the running statistics: not the global model's
    update, _ = batch_gradient(client, normalize(truth, SPEC), labels, mode)
    problem = Problem(tuple(naive_views(update, model_layout(model))), labels)
    (rec,) = reconstruct_batch(model, [problem], config=config.replace(model_mode=mode), dataset=SPEC,
                               device=torch.device("cpu"), progress=False)
    scores = sorted(score_batch(rec.images, truth), key=lambda s: int(s["matched"]))
    return rec.images[[int(s["index"]) for s in scores]], scores


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[tuple[str, str], torch.Tensor], torch.Tensor]:
    """Rows of every case and mode, the reconstructions by (case, mode), and the photos."""
    truth = photos(max(args.photos, args.batch), SPEC.image_size, SPEC.channels)
    labels = torch.arange(len(truth)) % SPEC.num_classes
    torch.manual_seed(args.seed)
    model = get_model("resnet18", num_classes=SPEC.num_classes, in_channels=SPEC.channels)
    config = GradInvConfig(iterations=args.iterations, lr=0.1, tv_weight=args.tv_weight, seed=args.seed)
    rows, images = [], {}
    todo = [(c, idx, m) for c, idx in cases(args.photos, args.batch) for m in MODEL_MODES]
    for case, idx, mode in tqdm(todo, desc="bn-ablation"):
        images[(case, mode)], scores = attack_case(model, truth[idx], labels[idx], mode, config)
        rows += [{"case": case, "mode": mode, "image": idx[int(s["matched"])], "ssim": float(s["ssim"]),
                  "psnr": float(s["psnr"]), "iterations": args.iterations, "seed": args.seed} for s in scores]
    return pd.DataFrame(rows), images, truth


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean SSIM per setting (single images pooled) and mode, with a bootstrap interval over images."""
    rows = rows.assign(setting=np.where(rows.case.str.startswith("one image"), "one image", rows.case))
    out = []
    for (setting, mode), group in rows.groupby(["setting", "mode"], sort=False):
        est = bootstrap_mean(group.ssim)
        out.append({"setting": setting, "mode": mode, "n": est.n, "ssim": est.mean, "ssim_low": est.low,
                    "ssim_high": est.high, "SSIM, mean [95% CI]": est.text()})
    return pd.DataFrame(out)


def figure(rows: pd.DataFrame, images: dict[tuple[str, str], torch.Tensor], truth: torch.Tensor,
           path: Path) -> None:
    """Originals (top) and each mode's reconstructions, single images then the batch, with SSIM."""
    columns = [(case, j) for case in dict.fromkeys(rows.case) for j in range(len(images[(case, "eval")]))]
    fig = Figure(figsize=(1.4 * len(columns), 1.6 * (1 + len(MODEL_MODES))))
    FigureCanvasAgg(fig)
    for c, (case, j) in enumerate(columns):
        for r, mode in enumerate((None, *MODEL_MODES)):
            ax = fig.add_subplot(1 + len(MODEL_MODES), len(columns), r * len(columns) + c + 1)
            part = rows[(rows.case == case) & (rows["mode"] == (mode or "eval"))].reset_index(drop=True)
            if mode is None:
                picture, title = truth[int(part.image.iloc[j])], case if j == 0 else ""
            else:
                picture, title = images[(case, mode)][j], f"{mode}: {part.ssim.iloc[j]:.2f}"
            ax.imshow(picture.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=3, help="photos attacked one at a time")
    parser.add_argument("--batch", type=int, default=3, help="photos in the batch case")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--tv-weight", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, images, truth = run(args)
    rows.to_csv(args.out / "bn_ablation_rows.csv", index=False)
    summary = summarise(rows)
    summary.drop(columns="SSIM, mean [95% CI]").to_csv(args.out / "bn_ablation.csv", index=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    footer = (f"ResNet-18 (untrained, seed {args.seed}), 32x32 photos, {args.iterations} iterations, "
              f"TV {args.tv_weight}, labels given, no compression; 95% bootstrap intervals over images. "
              f"Command: python -m experiments.bn_ablation {' '.join(sys.argv[1:])}; commit {commit}.")
    view = summary[["setting", "mode", "n", "SSIM, mean [95% CI]"]]
    (args.out / "bn_ablation.md").write_text(markdown(view) + f"\n\n{footer}\n")
    (args.out / "bn_ablation.tex").write_text(latex(view) + f"\n% {footer}\n")
    figure(rows, images, truth, args.out / "bn_ablation.png")
    print(markdown(view))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

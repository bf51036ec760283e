"""How far apart honest update norms are: a one-image FedSGD gradient against a batch's.

The norm bound (``max-norm-ratio``, :mod:`fedtrust.robust`) must leave honest clients
alone. In a FedSGD round that mixes an attacked one-image batch with ordinary batches,
the one-image gradient is the largest honest norm. This prints, for the ConvNet and
ResNet-18 at their seeded initialisation, the gradient norms of six random batches of
1, 2 and 32 images of the embedded sample and the ratio range one image : 32 images.

    python bench/norm_ratio.py [--seed 42] [--draws 6]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fedtrust.data import load_dataset
from fedtrust.models import get_model
from fedtrust.robust import l2_norm
from fedtrust.training import batch_gradient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42, help="model initialisation seed")
    parser.add_argument("--draws", type=int, default=6, help="random batches per size")
    args = parser.parse_args(argv)
    x, y = load_dataset("sample", "train").to_tensors()
    for name in ("convnet", "resnet18"):
        torch.manual_seed(args.seed)
        model = get_model(name, num_classes=10, in_channels=1)
        gen = torch.Generator().manual_seed(0)
        norms: dict[int, list[float]] = {}
        for size in (1, 2, 32):
            for _ in range(args.draws):
                idx = torch.randperm(len(x), generator=gen)[:size]
                grads, _ = batch_gradient(model, x[idx], y[idx])
                norms.setdefault(size, []).append(l2_norm(grads.values()))
            print(f"{name:9s} batch {size:2d}: norms {np.round(norms[size], 3).tolist()}")
        lo, hi = min(norms[1]) / max(norms[32]), max(norms[1]) / min(norms[32])
        print(f"{name:9s} one image : 32 images = {lo:.1f} .. {hi:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

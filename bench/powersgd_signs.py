"""Do a CUDA client and the CPU server orthogonalise PowerSGD's start Q with the same signs?

In round 1 every PowerSGD client multiplies its gradient by ``orth(Q0)``, the shared
seeded start (:func:`~fedtrust.compression.codecs.powersgd.initial_q`); the server
rebuilds the same ``Q0`` and orthogonalises it on the CPU to know what the client used
(the adaptive attacker's view ``G Q`` against ``p/``). Up to rank 2 ``orth`` is
Gram-Schmidt, whose signs are fixed by the arithmetic; from rank 3 it is
``torch.linalg.qr``, and the CPU's LAPACK and CUDA's solver are free to return a column
with the opposite sign. A flipped column leaves the decoded update unchanged (``P_hat
Q^T`` is invariant) but makes the server's view of that column the negative of what the
client sent, so the adaptive attack at rank >= 3 depends on the signs agreeing.

For every compressible tensor of ResNet-18 (10 classes) and each rank, this script
orthogonalises ``Q0`` on the CPU and on ``--device`` and prints, per rank, how many
columns were compared, how many point in opposite directions (``<cpu_col, gpu_col> < 0``)
and the largest element difference once the signs are aligned. Exit status 0 when no
column flipped, 1 when some did, 2 when there is no CUDA device.

Usage::

    python bench/powersgd_signs.py [--device cuda] [--ranks 1 2 3 4 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import torch

from fedtrust.compression.codecs.powersgd import initial_q, orthogonalize
from fedtrust.models import resnet18
from fedtrust.training import model_layout


def compare(rank: int, seed: int, device: torch.device) -> tuple[int, int, float]:
    """``(columns, flipped, max |cpu - device| after aligning signs)`` over ResNet-18's tensors."""
    columns = flipped = 0
    worst = 0.0
    for q in initial_q(model_layout(resnet18(num_classes=10)), rank, seed).values():
        on_cpu = orthogonalize(q)
        on_device = orthogonalize(q.to(device)).cpu()
        signs = torch.sign((on_cpu * on_device).sum(dim=0))
        columns += int(signs.numel())
        flipped += int((signs < 0).sum())
        worst = max(worst, float((on_cpu - on_device * signs).abs().max()))
    return columns, flipped, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (initial_q's generator)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("powersgd_signs: no CUDA device (torch.cuda.is_available() is False); nothing to compare",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    print(f"orth(Q0) on the CPU against {device} ({torch.cuda.get_device_name(device)}), ResNet-18, "
          f"seed {args.seed}")
    print("| rank | orth | columns | flipped | max abs difference (signs aligned) |")
    print("|---|---|---|---|---|")
    any_flipped = False
    for rank in args.ranks:
        columns, flipped, worst = compare(rank, args.seed, device)
        any_flipped |= flipped > 0
        method = "Gram-Schmidt" if rank <= 2 else "QR"
        print(f"| {rank} | {method} | {columns} | {flipped} | {worst:.2e} |")
    print("signs agree" if not any_flipped else
          "SIGNS DIFFER: a CUDA client's PowerSGD columns point the other way from the server's view")
    return 1 if any_flipped else 0


if __name__ == "__main__":
    raise SystemExit(main())

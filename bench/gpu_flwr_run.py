"""One Flower simulation of ResNet-18 on GPU clients, checked end to end.

A private local SuperLink (:class:`experiments.flwr_runner.LocalSuperLink`) runs the app
with ``--federation-config "num-supernodes=2 client-resources-num-gpus=G"``: 2 rounds of
FedSGD with PowerSGD rank 4 (the QR path of ``orth``, whose signs a CUDA client and the
CPU server must agree on), the BatchNorm mode of the paper (``client-model-mode = eval``),
and both gradient-inversion attackers on client 0's round-1 image for ``--iterations``.
It prints the run's final status, ``rounds.csv`` and ``gradinv.csv``. Exit status 0 when
the run finished and wrote its attack rows, 1 otherwise, 2 without CUDA.

Usage::

    python bench/gpu_flwr_run.py [--gpus-per-client 0.5] [--iterations 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.flwr_runner import REPO_ROOT, LocalSuperLink

RUN_NAME = "gpu-check"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus-per-client", type=float, default=0.5, help="client-resources-num-gpus")
    parser.add_argument("--iterations", type=int, default=200, help="attack iterations")
    parser.add_argument("--timeout", type=float, default=480.0, help="seconds the run may take")
    parser.add_argument("--keep", type=Path, default=None, help="output-dir to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_flwr_run: no CUDA device (torch.cuda.is_available() is False); nothing to run", file=sys.stderr)
        return 2
    out = args.keep or Path(tempfile.mkdtemp(prefix="fedtrust-gpu-check-"))
    run_config = {"model": "resnet18", "dataset": "sample", "num-server-rounds": 2, "compressor": "powersgd",
                  "level": 4, "client-model-mode": "eval", "device": "auto", "attack": "gradinv",
                  "attacker": "both", "attack-iterations": args.iterations, "mia": False, "output-dir": str(out),
                  "run-name": RUN_NAME}
    started = time.monotonic()
    with LocalSuperLink() as link:
        outcome = link.run_app(REPO_ROOT, run_config=run_config, num_supernodes=2,
                               federation_config={"client-resources-num-gpus": args.gpus_per_client},
                               timeout=args.timeout)
    seconds = time.monotonic() - started
    print(f"flwr run: ResNet-18, 2 clients at client-resources-num-gpus={args.gpus_per_client}, PowerSGD rank 4, "
          f"2 rounds, {args.iterations} attack iterations: {outcome.status} in {seconds:.0f} s (run folder {out})")
    folder = out / RUN_NAME
    for name in ("rounds.csv", "gradinv.csv"):
        path = folder / name
        if path.exists():
            print(f"\n{name}:\n{pd.read_csv(path).to_string(index=False)}")
        else:
            print(f"\n{name}: missing")
    if not outcome.ok or not (folder / "gradinv.csv").exists():
        print(outcome.details, outcome.log[-3000:], sep="\n", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of gradient inversion: batched (vmap) versus one reconstruction at a time.

Eight independent single-image reconstructions on an untrained ResNet-18
(32x32 RGB, scikit-image's bundled photos) run once vectorised
(``GradInvConfig(batched=True)``) and once one after another (``batched=False``)
in the same process, on the CPU and, where CUDA is available, on the GPU. It
prints image-iterations per second for both and their ratio; ``auto`` in
:class:`~fedtrust.attacks.GradInvConfig` picks the faster one per device type.

Usage::

    python bench/gradinv.py                       # CPU (and CUDA if present)
    python bench/gradinv.py --device cuda --iterations 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data as skdata
from skimage.transform import resize
from torch.nn import functional as F

from fedtrust.attacks.gradinv import GradInvConfig, Problem, reconstruct_batch
from fedtrust.attacks.gradinv.targets import build_views
from fedtrust.data.specs import get_spec
from fedtrust.models import resnet18
from fedtrust.training import model_layout

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
CIFAR = get_spec("cifar10")
CIFAR_MEAN, CIFAR_STD = CIFAR.mean, CIFAR.std


def photos(count: int, size: int = 32) -> torch.Tensor:
    """``count`` RGB images (N, 3, size, size) in [0, 1]: the photos and their mirror images."""
    out = []
    for i in range(count):
        img = resize(getattr(skdata, PHOTOS[i % len(PHOTOS)])(), (size, size), anti_aliasing=True)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        if (i // len(PHOTOS)) % 2:
            img = img[:, ::-1]
        out.append(torch.tensor(np.ascontiguousarray(img), dtype=torch.float32).permute(2, 0, 1))
    return torch.stack(out)


def gradients(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One dense single-image gradient per image (model in eval mode)."""
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    model.eval()
    out = []
    for x, y in zip((images - mean) / std, labels):
        loss = F.cross_entropy(model(x[None]), y[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        out.append({n: g.detach() for (n, _), g in zip(model.named_parameters(), grads)})
    return out


def measure(model: torch.nn.Module, problems: list[Problem], device: str, iterations: int, batched: bool) -> float:
    """Image-iterations per second of one run (after a one-iteration warm-up)."""
    base = GradInvConfig(tv_weight=1e-4, lr=0.1, batched=batched)
    kwargs = dict(dataset=CIFAR, device=torch.device(device), progress=False)
    reconstruct_batch(model, problems[:2], config=base.replace(iterations=1), **kwargs)
    start = time.perf_counter()
    reconstruct_batch(model, problems, config=base.replace(iterations=iterations), **kwargs)
    seconds = time.perf_counter() - start
    return len(problems) * iterations / seconds


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one line per device and mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="all", help="cpu, cuda, cuda:N or all (CPU, and CUDA if present)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="iterations per reconstruction (default: 3 on the CPU, 100 on CUDA)")
    parser.add_argument("--reconstructions", type=int, default=8, help="independent reconstructions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "all" else [args.device]
    torch.manual_seed(args.seed)
    model = resnet18()
    images = photos(args.reconstructions)
    labels = torch.arange(args.reconstructions) % 10
    layout = model_layout(model)
    problems = [Problem(tuple(build_views("naive", layout, decoded=g)), y[None])
                for g, y in zip(gradients(model, images, labels), labels)]
    print(f"gradinv bench: {args.reconstructions} independent reconstructions, ResNet-18, 32x32 RGB, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        iters = args.iterations or (3 if device == "cpu" else 100)
        name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
        rates = {}
        for batched in (False, True):
            rates[batched] = measure(model, problems, device, iters, batched)
            mode = "batched (vmap)" if batched else "one by one"
            print(f"  {device:7s} {name:24.24s} {mode:15s} {iters:4d} it  "
                  f"{rates[batched]:9.2f} image-iterations/s", flush=True)
        print(f"  {device:7s} batched / one-by-one = {rates[True] / rates[False]:.2f}x", flush=True)


if __name__ == "__main__":
    main()

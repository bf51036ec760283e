"""Benchmark the compressors on ResNet-18's real gradient.

One forward+backward pass of ResNet-18 (10 classes) on a batch of 32 random-normal
32x32 CIFAR-shaped images with random labels gives the gradient (that pass is timed
too). For each compressor and level the median time of ``decode(encode(gradient))``
is printed, with its ratio to the forward+backward pass and to a plain
implementation of PyTorch's single-worker PowerSGD math (``powerSGD_hook``: per
tensor ``Q = orth(Q)``, ``P = M Q``, ``orth(P)``, ``Q = M^T P``, ``P Q^T``, error)
timed in the same run at the same rank, plus the bytes sent and their fraction of
the dense update.

At each level the reference and the compressors are timed in turns (one call of
each per repeat), so that a shared machine's drift hits them alike. On the CPU the
page faults of fresh 45 MB buffers weigh heavily; on Linux with glibc,
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295``
keeps freed memory in the process and steadies the timings, and so does
``--threads 1`` when other processes share the cores.

Usage::

    python bench/compression.py [--device cpu|cuda] [--repeats N] [--warmup W] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedtrust.compression import codec_class, get_compressor, is_compressible, layout_of
from fedtrust.compression.base import layout_numel, matrix_shape
from fedtrust.compression.codecs.powersgd import orthogonalize
from fedtrust.models import resnet18
from fedtrust.training import select_device

try:
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize

    def torch_orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
        """PyTorch's own ``_orthogonalize`` (in place on a batch of one)."""
        batch = matrix.unsqueeze(0)
        _orthogonalize(batch, 0)
        return batch[0]
except ImportError:  # torch built without torch.distributed
    torch_orthogonalize = orthogonalize

LEVELS = (1, 4, 32)
CONFIGS: tuple[tuple[str, str, dict], ...] = (
    ("none", "none", {}),
    ("powersgd allreduce", "powersgd", {"mode": "allreduce"}),
    ("powersgd local", "powersgd", {"mode": "local"}),
    ("topk global", "topk", {"scope": "global"}),
    ("topk layer", "topk", {"scope": "layer"}),
)


@dataclass
class Result:
    """Everything one benchmark run measured."""

    rows: list[Row]
    fwd_bwd_ms: float
    reference_ms: dict[int, float]
    dense_nbytes: int


@dataclass
class Row:
    """One line of the table."""

    compressor: str
    level: str
    ms: float
    vs_fwd_bwd: float
    vs_reference: float | None
    nbytes: int
    fraction: float


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so that wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock time of ``fn`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def reference_powersgd(grad: dict[str, torch.Tensor], rank: int) -> Callable[[], dict[str, torch.Tensor]]:
    """PyTorch's single-worker PowerSGD math, one tensor at a time (warm start, error feedback)."""
    gen = torch.Generator().manual_seed(0)
    names = [n for n, t in grad.items() if is_compressible(tuple(t.shape), rank)]
    qs = {n: torch.randn(matrix_shape(tuple(grad[n].shape))[1], rank, generator=gen).to(grad[n].device)
          for n in names}
    errors = {n: torch.zeros(matrix_shape(tuple(grad[n].shape)), device=grad[n].device) for n in names}

    def step() -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in names:
            m = grad[name].reshape(errors[name].shape) + errors[name]
            q = torch_orthogonalize(qs[name])
            p = torch_orthogonalize(m @ q)
            qs[name] = m.T @ p
            approx = p @ qs[name].T
            errors[name] = m - approx
            out[name] = approx
        return out

    return step


def real_gradient(device: torch.device, repeats: int, warmup: int
                  ) -> tuple[dict[str, torch.Tensor], float]:
    """ResNet-18's gradient on 32 random CIFAR-shaped images, and the pass's median time (ms)."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10).to(device)
    images = torch.randn(32, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (32,), device=device)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    ms = median_ms(forward_backward, device, repeats, warmup)
    grad = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return grad, ms


def interleaved_median_ms(fns: dict[str, Callable[[], object]], device: torch.device,
                          repeats: int, warmup: int) -> dict[str, float]:
    """Median time (ms) of each function, timed in turns (one call of each per repeat).

    Taking turns exposes every function to the same drift of a shared machine
    (other processes, allocator state), so that their ratios stay meaningful.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(1000.0 * (time.perf_counter() - start))
    return {key: statistics.median(values) for key, values in times.items()}


def run(device: torch.device, repeats: int, warmup: int, levels: tuple[int, ...]) -> Result:
    """Time the forward+backward pass, then per level the reference and every compressor."""
    grad, fwd_bwd_ms = real_gradient(device, repeats, warmup)
    dense = 4 * layout_numel(layout_of(grad))
    rows: list[Row] = []
    reference_ms: dict[int, float] = {}
    for i, level in enumerate(levels):
        fns: dict[str, Callable[[], object]] = {"reference": reference_powersgd(grad, level)}
        nbytes: dict[str, int] = {}
        for label, name, options in CONFIGS:
            levelled = codec_class(name).levelled
            if not levelled and i > 0:
                continue  # the same at every level
            compressor = get_compressor(name, level=level, **options)
            nbytes[label] = compressor.encode(grad).nbytes
            fns[label] = lambda c=compressor: c.decode(c.encode(grad))
        ms = interleaved_median_ms(fns, device, repeats, warmup)
        reference_ms[level] = ms.pop("reference")
        levelled = {label: codec_class(name).levelled for label, name, _ in CONFIGS}
        for label, value in ms.items():
            rows.append(Row(label, str(level) if levelled[label] else "-", value, value / fwd_bwd_ms,
                            value / reference_ms[level] if levelled[label] else None,
                            nbytes[label], nbytes[label] / dense))
    order = [label for label, _, _ in CONFIGS]
    rows.sort(key=lambda r: order.index(r.compressor))
    return Result(rows, fwd_bwd_ms, reference_ms, dense)


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = (f"{'compressor':<20} {'level':>5} {'enc+dec ms':>11} {'x fwd+bwd':>10} "
              f"{'x torch PowerSGD':>17} {'bytes sent':>12} {'of dense':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ref = "-" if r.vs_reference is None else f"{r.vs_reference:.2f}"
        lines.append(f"{r.compressor:<20} {r.level:>5} {r.ms:>11.2f} {r.vs_fwd_bwd:>10.3f} "
                     f"{ref:>17} {r.nbytes:>12,d} {100 * r.fraction:>8.3f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: torch's choice); 1 steadies timings "
                             "on a shared machine")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = select_device(args.device)
    except RuntimeError as err:
        parser.error(str(err))
    result = run(device, args.repeats, args.warmup, tuple(args.levels))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"ResNet-18 gradient, batch 32 (32x32x3), device {device} ({name}), torch {torch.__version__}, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print(f"forward+backward: {result.fwd_bwd_ms:.1f} ms; dense update: {result.dense_nbytes:,d} bytes")
    print("torch PowerSGD math (single worker, per tensor): "
          + ", ".join(f"rank {r}: {ms:.2f} ms" for r, ms in result.reference_ms.items()))
    print(format_table(result.rows))


if __name__ == "__main__":
    main()

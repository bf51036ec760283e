"""Benchmark every registered compressor on ResNet-18's real gradient.

One forward+backward pass of ResNet-18 (10 classes) on a batch of 32 random-normal
32x32 CIFAR-shaped images with random labels gives the gradient (that pass is timed
in turns with the codecs of each level, so that every ratio compares times taken
together). Every codec of the registry is timed, in every combination of its options that
have a fixed set of values (PowerSGD's mode, Top-K's scope), at each ``--levels``
value it accepts (QSGD's levels stop at its ``max_level``, 8 bits; unlevelled codecs
once). What is timed is one round of the codec's protocol for one client, as
:func:`fedtrust.compression.rounds.run_round` runs it with the client's compressor
and the server's protocol state carried from round to round (so error feedback's
residual is added, and random-K draws a new round's positions on both sides): the
client's encode (every exchange), the server's answers between exchanges and its
decode. The median is printed with its ratio to the forward+backward pass and to a plain
implementation of PyTorch's single-worker PowerSGD math (``powerSGD_hook``: per
tensor ``Q = orth(Q)``, ``P = M Q``, ``orth(P)``, ``Q = M^T P``, ``P Q^T``, error)
timed in the same run at the same rank (for codecs at that level), plus the bytes
sent (every array of every exchange) and their fraction of the dense update.

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
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedtrust.compression import is_compressible, layout_of
from fedtrust.compression.base import layout_numel, matrix_shape
from fedtrust.compression.codec import Codec
from fedtrust.compression.codecs.powersgd import orthogonalize
from fedtrust.compression.registry import codec_class, codec_names, get_codec
from fedtrust.compression.rounds import run_round
from fedtrust.compression.spec import CompressorSpec
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


def variants() -> list[tuple[str, str, dict]]:
    """(label, compressor name, options) of every registered codec and every combination of
    its options that have a fixed set of allowed values (``seed`` keeps its default)."""
    out = []
    for name in codec_names():
        choices = [[(opt.option, value) for value in opt.allowed] for opt in codec_class(name).options if opt.allowed]
        for combo in itertools.product(*choices):
            out.append((" ".join([name, *(str(v) for _, v in combo)]), name, dict(combo)))
    return out


def codec_levels(cls: type[Codec], levels: tuple[int, ...]) -> list[int]:
    """The levels to time ``cls`` at: each of ``levels`` up to its ``max_level`` (then that),
    once, or one level for an unlevelled codec."""
    if not cls.levelled:
        return [levels[0]]
    top = cls.max_level
    return sorted({min(level, top) if top is not None else level for level in levels})


def one_round(codec: Codec, grad: dict[str, torch.Tensor]) -> tuple[Callable[[], object], int]:
    """A function running the next round of ``codec`` for one client (state carried), and
    the bytes that client sends in a round."""
    server = codec.server()
    compressors = [codec.compressor()]
    rounds = itertools.count(1)
    observed = run_round(codec, [grad], server_round=next(rounds), server=server, compressors=compressors)
    nbytes = sum(int(a.nbytes) for a in observed[0].arrays.values())
    return (lambda: run_round(codec, [grad], server_round=next(rounds), server=server,
                              compressors=compressors)), nbytes


@dataclass
class Result:
    """Everything one benchmark run measured."""

    rows: list[Row]
    fwd_bwd_ms: dict[int, float]
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


def real_gradient(device: torch.device) -> tuple[dict[str, torch.Tensor], Callable[[], object]]:
    """ResNet-18's gradient on 32 random CIFAR-shaped images, and the pass that computes it."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10).to(device)
    images = torch.randn(32, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (32,), device=device)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    forward_backward()
    grad = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return grad, forward_backward


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
    """Time the forward+backward pass, then per level the reference and every codec there."""
    grad, forward_backward = real_gradient(device)
    layout = layout_of(grad)
    dense = 4 * layout_numel(layout)
    configs = variants()
    plan = {label: codec_levels(codec_class(name), levels) for label, name, _ in configs}
    rows: list[Row] = []
    reference_ms: dict[int, float] = {}
    fwd_bwd_ms: dict[int, float] = {}
    for level in sorted({lv for lvs in plan.values() for lv in lvs}):
        fns: dict[str, Callable[[], object]] = {"fwd+bwd": forward_backward}
        if level in levels:
            fns["reference"] = reference_powersgd(grad, level)
        nbytes: dict[str, int] = {}
        for label, name, options in configs:
            if level not in plan[label]:
                continue
            codec = get_codec(CompressorSpec(name, level, options=tuple(sorted(options.items()))), layout)
            fns[label], nbytes[label] = one_round(codec, grad)
        ms = interleaved_median_ms(fns, device, repeats, warmup)
        fwd_bwd_ms[level] = fwd_bwd = ms.pop("fwd+bwd")
        if "reference" in ms:
            reference_ms[level] = ms.pop("reference")
        for label, value in ms.items():
            name = next(n for lab, n, _ in configs if lab == label)
            levelled = codec_class(name).levelled
            ref = reference_ms.get(level) if levelled else None
            rows.append(Row(label, str(level) if levelled else "-", value, value / fwd_bwd,
                            value / ref if ref else None, nbytes[label], nbytes[label] / dense))
    order = [label for label, _, _ in configs]
    rows.sort(key=lambda r: (order.index(r.compressor), int(r.level) if r.level != "-" else 0))
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
    print("forward+backward (timed in turns with each level's codecs): "
          + ", ".join(f"level {lv}: {ms:.1f} ms" for lv, ms in result.fwd_bwd_ms.items())
          + f"; dense update: {result.dense_nbytes:,d} bytes")
    print("torch PowerSGD math (single worker, per tensor): "
          + ", ".join(f"rank {r}: {ms:.2f} ms" for r, ms in result.reference_ms.items()))
    print(format_table(result.rows))


if __name__ == "__main__":
    main()

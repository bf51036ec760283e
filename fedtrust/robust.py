"""Norm bounds: what one client can do to the aggregate.

A client may send any finite numbers. FedAvg's weighted mean gives each client a
share ``w_i / sum(w)`` of the step, so one client that sends 1e30 in every float moves
the global model by about ``1e30 / n`` and poisons it for good. The server therefore
bounds each client's update by the round's typical update:

    m     = lower median of the round's norms ||u_1||, ..., ||u_n||   (sorted(norms)[(n - 1) // 2])
    bound = max-norm-ratio * m

and an update with ``||u_i|| > bound`` is refused (``max-norm-action = "refuse"``) or
scaled by ``bound / ||u_i||`` (``"clip"``). The *lower* median is what makes two
clients work: with one honest and one hostile client the plain median is their mean,
about half the hostile norm, and bounds nothing; the lower median is the honest norm.
BatchNorm running statistics are bounded the same way, by the norm of their change
from the global model's.

What it protects against: a minority of clients (fewer than half of a round's
replies) that send updates far larger than the others. What it cannot: a coordinated
majority (the median is then theirs), a lone client (its norm is its own median), or
small, well-aimed changes within the bound (backdoors, label flipping). Honest
updates differ in norm too: a FedSGD gradient of one image is 3.5-8 times the norm of
a 32-image batch's (``bench/norm_ratio.py``: ConvNet and ResNet-18 at initialisation), which is
why the default ratio is 10, and why the server intercepts before it bounds (an
attack on the one-image batch is unaffected by it).

Norms are computed in float64 from float32 arrays, so even 3e38 in every coordinate
gives a finite norm. This module imports no Flower.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ACTIONS = ("refuse", "clip")


def l2_norm(arrays: Iterable[np.ndarray | torch.Tensor]) -> float:
    """The L2 norm of several arrays taken as one vector, in float64 (``inf`` if any value is not finite)."""
    total = 0.0
    for a in arrays:
        t = a.detach().cpu() if isinstance(a, torch.Tensor) else _read_only_tensor(a)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        # one pass accumulating in float64 (no float64 copy); NaN or Inf anywhere makes it non-finite
        norm = float(torch.linalg.vector_norm(t.reshape(-1), dtype=torch.float64))
        if not math.isfinite(norm):
            return math.inf
        total += norm * norm
    return math.sqrt(total)


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, to be read only (a received payload's arrays may
    be read-only; ``torch.from_numpy`` warns about those, which this caller never writes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


def lower_median(values: Sequence[float]) -> float:
    """The lower median: ``sorted(values)[(n - 1) // 2]`` (an element of ``values``)."""
    if not values:
        raise ValueError("lower_median of no values")
    return sorted(values)[(len(values) - 1) // 2]


@dataclass(frozen=True)
class Verdict:
    """What a norm bound decides for one update: keep it scaled by ``scale``, or refuse it."""

    norm: float
    bound: float
    scale: float = 1.0
    refused: bool = False

    @property
    def clipped(self) -> bool:
        return not self.refused and self.scale < 1.0

    def reason(self, what: str = "update", ratio: float = 0.0) -> str:
        """A log line's reason: the norm, the bound and how it was found."""
        return (f"{what} norm {self.norm:.4g} is above max-norm-ratio {ratio:g} x the round's median "
                f"{self.bound / ratio if ratio else 0.0:.4g} (bound {self.bound:.4g})")


@dataclass(frozen=True)
class NormBound:
    """``ratio`` times the round's lower-median norm; ``ratio = 0`` is off.

    Parameters
    ----------
    ratio:
        ``max-norm-ratio``: 0 (off) or >= 1.
    action:
        ``"refuse"`` or ``"clip"`` (what :meth:`judge` does above the bound).
    """

    ratio: float
    action: str = "refuse"

    def __post_init__(self) -> None:
        if not (self.ratio == 0 or self.ratio >= 1):
            raise ValueError(f"max-norm-ratio={self.ratio!r}: allowed 0 (off) or a number >= 1")
        if self.action not in ACTIONS:
            raise ValueError(f"max-norm-action={self.action!r}: allowed {', '.join(ACTIONS)}")

    @property
    def active(self) -> bool:
        return self.ratio > 0

    def judge(self, norms: Sequence[float], action: str | None = None) -> list[Verdict]:
        """One :class:`Verdict` per norm (all kept when the bound is off).

        A norm that is not finite is always refused (clipping cannot make it finite).
        """
        action = action or self.action
        if not self.active or not norms:
            return [Verdict(norm=n, bound=math.inf) for n in norms]
        finite = [n for n in norms if math.isfinite(n)]
        bound = self.ratio * lower_median(finite) if finite else 0.0
        out = []
        for n in norms:
            if not math.isfinite(n):
                out.append(Verdict(norm=n, bound=bound, scale=0.0, refused=True))
            elif n <= bound:
                out.append(Verdict(norm=n, bound=bound))
            elif action == "clip":
                out.append(Verdict(norm=n, bound=bound, scale=bound / n))
            else:
                out.append(Verdict(norm=n, bound=bound, scale=0.0, refused=True))
        return out

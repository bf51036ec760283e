"""Interval estimates for the small samples the tables report.

:func:`bootstrap_mean` is the percentile bootstrap of a mean (Efron & Tibshirani 1993,
ch. 13): resample the values with replacement ``resamples`` times, take each
resample's mean, and report the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
With ``groups`` (for example the seed of each value) it resamples whole groups first
and then values within each drawn group (a two-stage bootstrap), so values that share
a model or a seed are not counted as independent.

A percentile interval of n = 8 to 24 values is itself rough: it is too narrow by
roughly ``sqrt((n - 1) / n)`` and says nothing about what a different data set,
model or scale would give. The tables say so where they quote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples of every interval (the percentile's Monte Carlo error is then well below
#: the third decimal the tables print).
RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap interval.

    Attributes
    ----------
    mean:
        The sample mean.
    low, high:
        The interval's ends (NaN for fewer than two values).
    n:
        How many values.
    level:
        The interval's coverage (0.95).
    """

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def text(self, digits: int = 3) -> str:
        """``0.412 [0.371, 0.455]``."""
        if not np.isfinite(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, groups: Sequence[object] | None = None,
                   level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean of ``values`` and its percentile-bootstrap interval (two-stage with ``groups``).

    Parameters
    ----------
    values:
        The sample (NaNs are an error: say what is missing instead).
    groups:
        The group of each value (e.g. its seed): groups are resampled, then values within them.
    level:
        Coverage of the interval, in (0, 1).
    resamples:
        Bootstrap resamples.
    seed:
        Seed of the resampling (the interval is reproducible).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} is not allowed; allowed: a number in (0, 1)")
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"bootstrap_mean needs finite values; got {x.size} values, "
                         f"{int(np.count_nonzero(~np.isfinite(x)))} not finite")
    if x.size < 2:
        return Interval(float(x.mean()), float("nan"), float("nan"), int(x.size), level)
    rng = np.random.default_rng(seed)
    if groups is None:
        means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    else:
        labels = np.asarray(list(groups), dtype=object)
        if labels.size != x.size:
            raise ValueError(f"{labels.size} group labels for {x.size} values")
        members = [x[labels == g] for g in dict.fromkeys(labels.tolist())]
        picks = rng.integers(0, len(members), size=(resamples, len(members)))
        means = np.array([np.concatenate([m[rng.integers(0, m.size, m.size)] for m in (members[j] for j in row)]).mean()
                          for row in picks])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(low), float(high), int(x.size), level)


def _normal_interval(estimate: float, se: float, level: float) -> tuple[float, float]:
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    return max(0.0, estimate - z * se), min(1.0, estimate + z * se)


def balanced_accuracy_interval(accuracy: float, members: int, nonmembers: int,
                               level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval of a balanced accuracy ``(TPR + TNR) / 2`` measured on
    ``members`` and ``nonmembers`` candidates, taking TPR and TNR both equal to it (only
    their mean is recorded): ``se = sqrt(a (1 - a) (1/n1 + 1/n0)) / 2``. It reflects the
    candidates' sampling only, not the model's training or the threshold's calibration."""
    if members < 1 or nonmembers < 1 or not np.isfinite(accuracy):
        return float("nan"), float("nan")
    se = float(np.sqrt(accuracy * (1 - accuracy) * (1 / members + 1 / nonmembers)) / 2)
    return _normal_interval(accuracy, se, level)


def auc_interval(auc: float, members: int, nonmembers: int, level: float = 0.95) -> tuple[float, float]:
    """Hanley & McNeil (1982) normal interval of a ROC AUC from ``members`` positives and
    ``nonmembers`` negatives (candidates' sampling only)."""
    if members < 1 or nonmembers < 1 or not np.isfinite(auc):
        return float("nan"), float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (members - 1) * (q1 - auc * auc) + (nonmembers - 1) * (q2 - auc * auc)) \
        / (members * nonmembers)
    return _normal_interval(auc, float(np.sqrt(max(var, 0.0))), level)

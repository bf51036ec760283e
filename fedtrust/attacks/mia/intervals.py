"""Bootstrap intervals of a membership attack's metrics, and whether a low FPR is resolved.

A membership attack is judged by its ROC AUC, its balanced accuracy at the threshold
the attacker chose, and its TPR at a low false-positive rate (Carlini et al. 2022;
Aerni et al. 2024). :func:`metric_intervals` gives each a percentile-bootstrap interval
(Efron & Tibshirani 1993, ch. 13) by resampling members and non-members separately
(a stratified bootstrap: every resample keeps the candidates' class sizes), with a
seeded generator and a recorded number of resamples.

What an interval covers: the sampling of the evaluated candidates from their pools,
given the trained model and the scores. It says nothing about what another training
run, seed or data set would give.

Low FPRs: with ``n0`` non-members an FPR level ``f`` allows ``floor(f n0)`` false
positives. A TPR at an FPR that allows none is the TPR at zero false positives, and one
that allows a handful rests on the few highest-scoring non-members. :func:`fpr_resolution`
says how many false positives a level allows and whether that reaches
:data:`MIN_FALSE_POSITIVES` (so 0.1% needs 10,000 non-members and 1% needs 1,000).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtrust.attacks.mia.metrics import allowed_false_positives

#: Resamples of every metric interval unless asked otherwise.
METRIC_RESAMPLES = 1_000
#: False positives an FPR level must allow before its TPR is reported as resolved.
MIN_FALSE_POSITIVES = 10
#: The FPR levels every attack reports.
FPR_LEVELS = (0.001, 0.01)


@dataclass(frozen=True)
class Estimate:
    """A metric with its percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        """``0.712 [0.684, 0.741]``."""
        if not np.isfinite(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class FPRResolution:
    """What ``n0`` non-members can say at an FPR level."""

    level: float
    nonmembers: int
    false_positives: int

    @property
    def resolved(self) -> bool:
        """Whether the level allows at least :data:`MIN_FALSE_POSITIVES` false positives."""
        return self.false_positives >= MIN_FALSE_POSITIVES

    @property
    def needed(self) -> int:
        """Non-members the level needs to be resolved."""
        return int(np.ceil(MIN_FALSE_POSITIVES / self.level - 1e-9))

    def note(self) -> str:
        """A sentence for tables: empty when resolved."""
        if self.resolved:
            return ""
        return (f"TPR at {100 * self.level:g}% FPR: {self.nonmembers} non-members allow "
                f"{self.false_positives} false positive(s); {self.needed} are needed for "
                f"{MIN_FALSE_POSITIVES}")


def fpr_resolution(nonmembers: int, level: float) -> FPRResolution:
    """How many false positives ``nonmembers`` allow at FPR ``level``."""
    return FPRResolution(float(level), int(nonmembers), allowed_false_positives(int(nonmembers), level))


@dataclass(frozen=True)
class MetricIntervals:
    """An attack's metrics on its evaluation candidates, each with its interval.

    Attributes
    ----------
    auc, tpr_at_0_1pct_fpr, tpr_at_1pct_fpr:
        ROC AUC and the TPR at 0.1% and 1% FPR (highest TPR of a threshold whose false
        positives stay within the level).
    accuracy:
        Balanced accuracy at the attacker's threshold (``None`` without one).
    members, nonmembers:
        The candidates.
    resamples, seed, level:
        The bootstrap's resamples, generator seed and coverage.
    """

    auc: Estimate
    tpr_at_0_1pct_fpr: Estimate
    tpr_at_1pct_fpr: Estimate
    accuracy: Estimate | None
    members: int
    nonmembers: int
    resamples: int
    seed: int
    level: float = 0.95

    def resolutions(self) -> tuple[FPRResolution, ...]:
        """What the non-members resolve at each reported FPR level."""
        return tuple(fpr_resolution(self.nonmembers, f) for f in FPR_LEVELS)


def _aucs(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every row (members ``(B, n1)``, non-members ``(B, n0)``), ties counted half.

    Mann-Whitney: the AUC is the probability that a member outscores a non-member; per row
    the non-members are sorted once and each member's count of lower (and equal) scores
    is two binary searches.
    """
    rows = member_scores.shape[0]
    out = np.empty(rows)
    for b in range(rows):
        neg = np.sort(nonmember_scores[b])
        below = np.searchsorted(neg, member_scores[b], side="left")
        at_or_below = np.searchsorted(neg, member_scores[b], side="right")
        out[b] = (below + at_or_below).sum() / (2.0 * neg.size * member_scores.shape[1])
    return out


def _tprs(member_scores: np.ndarray, nonmember_scores: np.ndarray, level: float) -> np.ndarray:
    """Per row: the highest TPR of a threshold that lets at most ``floor(level n0)`` non-members
    score at or above it (a member is caught when it scores strictly above the
    ``(allowed + 1)``-th highest non-member)."""
    n0 = nonmember_scores.shape[1]
    allowed = allowed_false_positives(n0, level)
    if allowed >= n0:
        return np.ones(member_scores.shape[0])
    # the (allowed + 1)-th largest non-member score of every row
    kth = -np.partition(-nonmember_scores, allowed, axis=1)[:, allowed]
    return (member_scores > kth[:, None]).mean(axis=1)


def metric_intervals(member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                     threshold: float | None = None, resamples: int = METRIC_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> MetricIntervals:
    """AUC, TPR at 0.1% and 1% FPR and (with ``threshold``) balanced accuracy, with
    stratified percentile-bootstrap intervals.

    Parameters
    ----------
    member_scores, nonmember_scores:
        Attack scores (higher: more likely a member) of the evaluated members and non-members.
    threshold:
        The attacker's decision threshold (a member is predicted where ``score >= threshold``),
        fitted without the evaluated candidates' membership; ``None``: no accuracy.
    resamples, seed, level:
        Bootstrap resamples, generator seed and coverage.
    """
    pos = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    neg = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    if pos.size < 1 or neg.size < 1:
        raise ValueError(f"metric_intervals needs members and non-members; got {pos.size} and {neg.size}")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("metric_intervals needs finite scores")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"resamples={resamples!r} must be >= 1 and level={level!r} in (0, 1)")
    rng = np.random.default_rng(seed)
    pos_b = pos[rng.integers(0, pos.size, size=(resamples, pos.size))]
    neg_b = neg[rng.integers(0, neg.size, size=(resamples, neg.size))]
    quantiles = [(1 - level) / 2, (1 + level) / 2]

    def estimate(point: float, samples: np.ndarray) -> Estimate:
        low, high = np.quantile(samples, quantiles)
        return Estimate(float(point), float(low), float(high))

    auc = estimate(float(_aucs(pos[None], neg[None])[0]), _aucs(pos_b, neg_b))
    tprs = [estimate(float(_tprs(pos[None], neg[None], f)[0]), _tprs(pos_b, neg_b, f)) for f in FPR_LEVELS]
    accuracy = None
    if threshold is not None:
        def balanced(p: np.ndarray, n: np.ndarray) -> np.ndarray:
            return ((p >= threshold).mean(axis=-1) + (n < threshold).mean(axis=-1)) / 2
        accuracy = estimate(float(balanced(pos, neg)), balanced(pos_b, neg_b))
    return MetricIntervals(auc=auc, tpr_at_0_1pct_fpr=tprs[0], tpr_at_1pct_fpr=tprs[1], accuracy=accuracy,
                           members=int(pos.size), nonmembers=int(neg.size), resamples=int(resamples),
                           seed=int(seed), level=float(level))


def threshold_at_fpr(nonmember_scores: np.ndarray, level: float) -> float:
    """The attacker's threshold from non-members alone (known non-members, e.g. the
    population or held-out data): the lowest that flags at most ``floor(level n0)``
    of them (``score >= threshold`` predicts a member). Needs no member's membership."""
    neg = np.sort(np.asarray(nonmember_scores, dtype=np.float64).reshape(-1))[::-1]
    if neg.size == 0:
        raise ValueError("threshold_at_fpr needs non-member scores")
    allowed = allowed_false_positives(neg.size, level)
    if allowed >= neg.size:
        return float(-np.inf)
    return float(np.nextafter(neg[allowed], np.inf))

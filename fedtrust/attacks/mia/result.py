"""One attack's outcome and how it is computed from scores (thresholds fitted on the
calibration candidates, metrics on the evaluation candidates); its ROC figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedtrust.attacks.mia.intervals import METRIC_RESAMPLES, metric_intervals
from fedtrust.attacks.mia.metrics import (
    allowed_false_positives,
    balanced_accuracy,
    plot_roc,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)
from fedtrust.attacks.mia.sampling import MembershipSplit
from fedtrust.attacks.mia.thresholds import (
    SCOPES,
    THRESHOLD_KIND,
    ThresholdRule,
    calibration_set,
    fit_thresholds,
)
from fedtrust.records import MIAMetrics


@dataclass(frozen=True)
class MIAResult(MIAMetrics):
    """Metrics of one attack with one threshold scope, on the evaluation candidates.

    The metrics (:class:`~fedtrust.records.MIAMetrics`: ``attack``, ``scope``,
    ``accuracy``, ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0_1pct_fpr``, ``members``,
    ``nonmembers``) are what ``mia.csv`` keeps (:meth:`fedtrust.records.MIARow.of`); the
    rest is for figures and checks.

    Attributes
    ----------
    fpr_floor_1pct_n, fpr_floor_0_1pct_n:
        False positives the 1% and 0.1% levels allow with ``nonmembers``
        non-members (0 means the level is below the resolution ``1/nonmembers``
        and the TPR is the one at zero false positives).
    roc:
        ``(fpr, tpr)`` on the evaluation candidates.
    rule:
        The thresholds chosen on the calibration candidates.
    """

    fpr_floor_1pct_n: int
    fpr_floor_0_1pct_n: int
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False, compare=False)
    rule: ThresholdRule | None = field(default=None, repr=False, compare=False)


def evaluate_scores(attack: str, scope: str, scores: np.ndarray, labels: np.ndarray,
                    is_member: np.ndarray, split: MembershipSplit, seed: int = 0) -> MIAResult:
    """Fit thresholds on the calibration candidates and score the evaluation candidates.

    Parameters
    ----------
    attack:
        Name recorded in the result.
    scope:
        ``"global"`` or ``"per_class"`` (oracle) thresholds, or ``"nonmember"`` (the
        attacker's: calibration non-members only; see :mod:`~fedtrust.attacks.mia.thresholds`);
        any other name (e.g. ``"update"``) is recorded as given and uses a global oracle threshold.
    scores, labels, is_member:
        Per-candidate arrays in the order of ``split`` (members first).
    split:
        Which candidates calibrate and which are evaluated.
    seed:
        Seed of the metrics' bootstrap intervals.

    Returns
    -------
    MIAResult
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    is_member = np.asarray(is_member, dtype=bool).reshape(-1)
    if not len(scores) == len(labels) == len(is_member) == split.num_candidates:
        raise ValueError("scores, labels and is_member must have one entry per candidate")
    rule = fit_thresholds(calibration_set(scores, labels, is_member, split),
                          scope=scope if scope in SCOPES else "global")
    ev = split.evaluation
    s_ev, m_ev = scores[ev], is_member[ev]
    predicted = rule.predict(s_ev, labels[ev])
    single = None if rule.class_thresholds else rule.global_threshold
    return scored_result(attack, scope, s_ev, m_ev, accuracy=balanced_accuracy(predicted, m_ev), rule=rule,
                         threshold=THRESHOLD_KIND[rule.scope], threshold_value=single, seed=seed)


def scored_result(attack: str, scope: str, scores: np.ndarray, is_member: np.ndarray, *, accuracy: float,
                  threshold: str = "oracle", threshold_value: float | None = None, reference_models: int = 0,
                  rule: ThresholdRule | None = None, seed: int = 0,
                  resamples: int = METRIC_RESAMPLES) -> MIAResult:
    """The result of ``scores`` on evaluated candidates: AUC and TPR at 1% and 0.1% FPR with
    their bootstrap intervals (:func:`~fedtrust.attacks.mia.intervals.metric_intervals`),
    and the balanced ``accuracy`` of a threshold set as ``threshold`` says (with the same
    interval when that is one ``threshold_value``: ``score >= threshold_value`` is a member)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_member = np.asarray(is_member, dtype=bool).reshape(-1)
    fpr, tpr, _ = roc_curve(scores, is_member)
    n_non = int((~is_member).sum())
    if not np.isfinite(scores).all():  # no intervals of scores that are not numbers (the metrics say what they can)
        none = {k: None for k in ("auc_low", "auc_high", "tpr_at_1pct_fpr_low", "tpr_at_1pct_fpr_high",
                                  "tpr_at_0_1pct_fpr_low", "tpr_at_0_1pct_fpr_high", "accuracy_low",
                                  "accuracy_high")}
        intervals, resamples = none, 0
    else:
        single = threshold_value if threshold_value is not None and not np.isnan(threshold_value) else None
        ci = metric_intervals(scores[is_member], scores[~is_member], threshold=single, resamples=resamples,
                              seed=seed)
        intervals = {"auc_low": ci.auc.low, "auc_high": ci.auc.high,
                     "tpr_at_1pct_fpr_low": ci.tpr_at_1pct_fpr.low, "tpr_at_1pct_fpr_high": ci.tpr_at_1pct_fpr.high,
                     "tpr_at_0_1pct_fpr_low": ci.tpr_at_0_1pct_fpr.low,
                     "tpr_at_0_1pct_fpr_high": ci.tpr_at_0_1pct_fpr.high,
                     "accuracy_low": ci.accuracy.low if ci.accuracy else None,
                     "accuracy_high": ci.accuracy.high if ci.accuracy else None}
    return MIAResult(attack=attack, scope=scope, accuracy=float(accuracy),
                     auc=roc_auc(scores, is_member),
                     tpr_at_1pct_fpr=tpr_at_fpr(scores, is_member, 0.01),
                     tpr_at_0_1pct_fpr=tpr_at_fpr(scores, is_member, 0.001),
                     members=int(is_member.sum()), nonmembers=n_non,
                     reference_models=int(reference_models), threshold=threshold, **intervals,
                     resamples=resamples,
                     fpr_floor_1pct_n=allowed_false_positives(n_non, 0.01),
                     fpr_floor_0_1pct_n=allowed_false_positives(n_non, 0.001),
                     roc=(fpr, tpr), rule=rule)


def plot_results_roc(results: Sequence[MIAResult], path: str | Path, *,
                     title: str | None = None) -> Path:
    """ROC figure (log-log PNG) with one curve per result, labelled ``attack (scope) AUC``."""
    curves = {f"{r.attack} ({r.scope}) AUC={r.auc:.3f}": r.roc for r in results}
    return plot_roc(curves, path, title=title)

"""Decision thresholds chosen on a calibration set, applied to evaluated samples.

The selection functions take a :class:`CalibrationSet` and nothing else, and
:func:`calibration_set` builds one from the calibration positions of a
:class:`~fedtrust.attacks.mia.sampling.MembershipSplit` only, so the
membership of evaluated samples cannot reach threshold selection.
:meth:`ThresholdRule.predict` takes scores and labels, never membership.

Scopes ``global`` and ``per_class``: thresholds maximise balanced accuracy on the
calibration set, globally or per class (Song & Mittal 2021, "Systematic evaluation of
privacy risks of machine learning models": class-conditional thresholds). They read
the calibration members' membership, which a real attacker does not know: an *oracle*
threshold, labelled so in ``mia.csv``.

Scope ``nonmember``: the attacker's way. The threshold is set on the calibration
non-members alone (samples an attacker knows were not trained on: held-out or
population data) so that at most ``ATTACKER_FPR`` of them are flagged
(:func:`~fedtrust.attacks.mia.intervals.threshold_at_fpr`); no member's score or
membership is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedtrust.attacks.mia.intervals import threshold_at_fpr
from fedtrust.attacks.mia.metrics import roc_counts
from fedtrust.attacks.mia.sampling import MembershipSplit

#: Threshold scopes of the black-box attacks.
SCOPES: tuple[str, ...] = ("global", "per_class", "nonmember")
#: The false-positive rate the attacker's threshold (scope ``nonmember``) allows on known non-members.
ATTACKER_FPR = 0.05
#: What ``mia.csv`` calls the threshold of each scope.
THRESHOLD_KIND = {"global": "oracle", "per_class": "oracle", "nonmember": "non-members"}


@dataclass(frozen=True)
class CalibrationSet:
    """Scores, labels and membership of the calibration candidates only."""

    scores: np.ndarray
    labels: np.ndarray
    is_member: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.scores) == len(self.labels) == len(self.is_member):
            raise ValueError("scores, labels and is_member must have the same length")


def calibration_set(scores: np.ndarray, labels: np.ndarray, is_member: np.ndarray,
                    split: MembershipSplit) -> CalibrationSet:
    """The calibration part of per-candidate arrays (in candidate order)."""
    cal = split.calibration
    return CalibrationSet(scores=np.asarray(scores, dtype=np.float64)[cal],
                          labels=np.asarray(labels, dtype=np.int64)[cal],
                          is_member=np.asarray(is_member, dtype=bool)[cal])


@dataclass(frozen=True)
class ThresholdRule:
    """Predict "member" when ``score >= threshold`` (per class where one was fitted).

    Attributes
    ----------
    scope:
        ``"global"``, ``"per_class"`` or ``"nonmember"`` (one threshold, from non-members alone).
    global_threshold:
        Threshold for every sample (``global``) or for classes without their own.
    class_thresholds:
        ``class -> threshold`` for classes whose calibration samples had both
        members and non-members (``per_class`` only).
    """

    scope: str
    global_threshold: float
    class_thresholds: dict[int, float] = field(default_factory=dict)

    def thresholds_for(self, labels: np.ndarray) -> np.ndarray:
        """The threshold applying to each sample."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = np.full(len(labels), self.global_threshold, dtype=np.float64)
        for c, t in self.class_thresholds.items():
            out[labels == c] = t
        return out

    def predict(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Boolean "member" predictions for samples with these scores and labels."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        return scores >= self.thresholds_for(labels)


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold with the highest balanced accuracy on these samples.

    Candidates are midpoints between consecutive distinct scores (and ``+-inf``);
    ties go to the highest threshold.
    """
    fp, tp, thr = roc_counts(scores, is_member)
    balanced = 0.5 * (tp / tp[-1] + 1.0 - fp / fp[-1])
    i = int(np.argmax(balanced))
    if i == 0:
        return float("inf")
    if i == len(thr) - 1:
        return float("-inf")
    return float(0.5 * (thr[i] + thr[i + 1]))


def fit_thresholds(calibration: CalibrationSet, *, scope: str,
                   min_per_class: int = 1) -> ThresholdRule:
    """Choose thresholds from calibration samples alone.

    Parameters
    ----------
    calibration:
        The calibration candidates (see :func:`calibration_set`).
    scope:
        ``"global"``: one threshold; ``"per_class"``: one per class with at
        least ``min_per_class`` members and non-members among the calibration
        samples, the global one for the other classes; ``"nonmember"``: one
        threshold from the calibration non-members alone, at ``ATTACKER_FPR``.
    min_per_class:
        Calibration members and non-members a class needs for its own threshold.

    Returns
    -------
    ThresholdRule
    """
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not known; allowed: {', '.join(SCOPES)}")
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be >= 1, got {min_per_class}")
    scores = np.asarray(calibration.scores, dtype=np.float64)
    labels = np.asarray(calibration.labels, dtype=np.int64)
    member = np.asarray(calibration.is_member, dtype=bool)
    if scope == "nonmember":
        return ThresholdRule(scope=scope, global_threshold=threshold_at_fpr(scores[~member], ATTACKER_FPR))
    global_t = best_threshold(scores, member)
    per_class: dict[int, float] = {}
    if scope == "per_class":
        for c in np.unique(labels):
            sel = labels == c
            if member[sel].sum() >= min_per_class and (~member[sel]).sum() >= min_per_class:
                per_class[int(c)] = best_threshold(scores[sel], member[sel])
    return ThresholdRule(scope=scope, global_threshold=global_t, class_thresholds=per_class)

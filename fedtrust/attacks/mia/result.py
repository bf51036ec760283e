"""One attack's outcome, how it is computed from scores, and how results are written."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    ThresholdRule,
    calibration_set,
    fit_thresholds,
)

#: Columns of :meth:`MIAResult.to_row`, in order.
CSV_COLUMNS: tuple[str, ...] = ("attack", "scope", "accuracy", "auc", "tpr_at_1pct_fpr",
                                "tpr_at_0_1pct_fpr", "members", "nonmembers")


@dataclass
class MIAResult:
    """Metrics of one attack with one threshold scope, on the evaluation candidates.

    Attributes
    ----------
    attack:
        Attack name (``"loss"``, ``"update_cosine"`` ...).
    scope:
        ``"global"``, ``"per_class"`` (black-box) or ``"update"``.
    accuracy:
        Balanced accuracy of the calibrated thresholds (the paper's number).
    auc:
        ROC AUC of the scores.
    tpr_at_1pct_fpr, tpr_at_0_1pct_fpr:
        TPR at FPR <= 1% and <= 0.1%.
    members, nonmembers:
        Evaluation candidates of each kind.
    fpr_floor_1pct_n, fpr_floor_0_1pct_n:
        False positives the 1% and 0.1% levels allow with ``nonmembers``
        non-members (0 means the level is below the resolution ``1/nonmembers``
        and the TPR is the one at zero false positives).
    roc:
        ``(fpr, tpr)`` on the evaluation candidates.
    rule:
        The thresholds chosen on the calibration candidates.
    """

    attack: str
    scope: str
    accuracy: float
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float
    members: int
    nonmembers: int
    fpr_floor_1pct_n: int
    fpr_floor_0_1pct_n: int
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False, compare=False)
    rule: ThresholdRule | None = field(default=None, repr=False, compare=False)

    def to_row(self) -> dict[str, object]:
        """The CSV row (:data:`CSV_COLUMNS`)."""
        return {"attack": self.attack, "scope": self.scope, "accuracy": float(self.accuracy),
                "auc": float(self.auc), "tpr_at_1pct_fpr": float(self.tpr_at_1pct_fpr),
                "tpr_at_0_1pct_fpr": float(self.tpr_at_0_1pct_fpr),
                "members": int(self.members), "nonmembers": int(self.nonmembers)}


def evaluate_scores(attack: str, scope: str, scores: np.ndarray, labels: np.ndarray,
                    is_member: np.ndarray, split: MembershipSplit) -> MIAResult:
    """Fit thresholds on the calibration candidates and score the evaluation candidates.

    Parameters
    ----------
    attack:
        Name recorded in the result.
    scope:
        ``"global"`` or ``"per_class"`` thresholds; any other name (e.g.
        ``"update"``) is recorded as given and uses a global threshold.
    scores, labels, is_member:
        Per-candidate arrays in the order of ``split`` (members first).
    split:
        Which candidates calibrate and which are evaluated.

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
                          scope="per_class" if scope == "per_class" else "global")
    ev = split.evaluation
    s_ev, m_ev = scores[ev], is_member[ev]
    predicted = rule.predict(s_ev, labels[ev])
    fpr, tpr, _ = roc_curve(s_ev, m_ev)
    n_non = int((~m_ev).sum())
    return MIAResult(attack=attack, scope=scope,
                     accuracy=balanced_accuracy(predicted, m_ev),
                     auc=roc_auc(s_ev, m_ev),
                     tpr_at_1pct_fpr=tpr_at_fpr(s_ev, m_ev, 0.01),
                     tpr_at_0_1pct_fpr=tpr_at_fpr(s_ev, m_ev, 0.001),
                     members=int(m_ev.sum()), nonmembers=n_non,
                     fpr_floor_1pct_n=allowed_false_positives(n_non, 0.01),
                     fpr_floor_0_1pct_n=allowed_false_positives(n_non, 0.001),
                     roc=(fpr, tpr), rule=rule)


def write_results_csv(results: Iterable[MIAResult], path: str | Path,
                      extra: dict[str, object] | None = None) -> Path:
    """Write results as CSV (:data:`CSV_COLUMNS`, after the ``extra`` columns if given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*extra, *CSV_COLUMNS])
        writer.writeheader()
        for r in results:
            writer.writerow({**extra, **r.to_row()})
    return path


def plot_results_roc(results: Sequence[MIAResult], path: str | Path, *,
                     title: str | None = None) -> Path:
    """ROC figure (log-log PNG) with one curve per result, labelled ``attack (scope) AUC``."""
    curves = {f"{r.attack} ({r.scope}) AUC={r.auc:.3f}": r.roc for r in results}
    return plot_roc(curves, path, title=title)

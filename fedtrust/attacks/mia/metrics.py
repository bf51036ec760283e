"""Attack metrics in NumPy: balanced accuracy, ROC curve, AUC, TPR at low FPR, ROC figure.

Conventions: ``scores`` are higher for likelier members; a sample is predicted a
member when ``score >= threshold``; ``is_member`` is a boolean array.

Low-FPR operating points follow Carlini et al. (2022), "Membership Inference
Attacks From First Principles": the true-positive rate at a false-positive rate
of 1% or 0.1%. Such a rate is only resolved with enough non-members: with
``n`` non-members an FPR of ``level`` allows ``floor(level * n)`` false
positives (1000 non-members at 0.1% allow exactly one; fewer than 1000 allow
none, and the number is then the TPR at zero false positives).
:func:`allowed_false_positives` gives that count, reported next to each rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_member).reshape(-1)
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("is_member must be boolean (or 0/1)")
        m = m.astype(bool)
    if len(s) != len(m):
        raise ValueError(f"{len(s)} scores but {len(m)} membership labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if m.all() or not m.any():
        raise ValueError("need at least one member and one non-member")
    return s, m


def balanced_accuracy(predicted_member: np.ndarray, is_member: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates.

    Equals plain accuracy when members and non-members are equally many (the
    paper's "attack success rate").
    """
    pred = np.asarray(predicted_member, dtype=bool).reshape(-1)
    _, m = _check(np.zeros(len(pred)), is_member)
    if len(pred) != len(m):
        raise ValueError(f"{len(pred)} predictions but {len(m)} membership labels")
    tpr = float(pred[m].mean())
    tnr = float((~pred[~m]).mean())
    return 0.5 * (tpr + tnr)


def roc_counts(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive counts at every distinct threshold.

    Returns
    -------
    fp, tp, thresholds:
        ``fp[i]``/``tp[i]`` count non-members/members with ``score >=
        thresholds[i]``; ``thresholds`` decrease from ``+inf`` (nothing
        predicted a member) to the lowest score (everything predicted a member).
    """
    s, m = _check(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, m_sorted = s[order], m[order]
    # last position of each group of equal scores
    ends = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s_sorted) - 1]
    tp = np.cumsum(m_sorted)[ends]
    fp = np.cumsum(~m_sorted)[ends]
    return (np.r_[0, fp].astype(np.int64), np.r_[0, tp].astype(np.int64),
            np.r_[np.inf, s_sorted[ends]])


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct threshold.

    Starts at ``(0, 0)`` (threshold ``+inf``) and ends at ``(1, 1)``; no
    intermediate point is dropped (as ``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False``).
    """
    fp, tp, thresholds = roc_counts(scores, is_member)
    return fp / fp[-1], tp / tp[-1], thresholds


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score) + 0.5 P(tie).

    Computed as the Mann-Whitney U statistic with average ranks for ties, which
    equals the trapezoidal area under :func:`roc_curve`.
    """
    s, m = _check(scores, is_member)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted) != 0) + 1]
    ends = np.r_[starts[1:], len(s_sorted)]
    avg_rank = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg_rank, ends - starts)
    n1, n0 = int(m.sum()), int((~m).sum())
    return float((ranks[m].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def allowed_false_positives(num_nonmembers: int, fpr_level: float) -> int:
    """How many non-members may be false positives at FPR ``fpr_level``: ``floor(level * n)``."""
    if not 0.0 <= fpr_level <= 1.0:
        raise ValueError(f"fpr_level must lie in [0, 1], got {fpr_level}")
    return int(math.floor(fpr_level * int(num_nonmembers) + 1e-9))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr_level: float) -> float:
    """Highest TPR of a threshold whose FPR is at most ``fpr_level``.

    Counted in false positives (``fp <= allowed_false_positives(n0, level)``),
    so float rounding cannot move a point across the level.
    """
    fp, tp, _ = roc_counts(scores, is_member)
    allowed = allowed_false_positives(int(fp[-1]), fpr_level)
    return float(tp[fp <= allowed].max() / tp[-1])


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
             title: str | None = None, min_rate: float | None = None) -> Path:
    """Save ROC curves on log-log axes as a PNG (matplotlib, Agg canvas, no pyplot state).

    Parameters
    ----------
    curves:
        ``label -> (fpr, tpr)``, one curve per attack.
    path:
        Output file (parent folders are created).
    title:
        Figure title.
    min_rate:
        Lower end of both axes; rates of 0 are drawn there. Default: half the
        smallest positive FPR over all curves (at least ``1e-5``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    if min_rate is None:
        fprs = [np.asarray(fpr, dtype=float) for fpr, _ in curves.values()]
        positive = [float(f[f > 0].min()) for f in fprs if np.any(f > 0)]
        min_rate = max(0.5 * min(positive), 1e-5) if positive else 1e-5
    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (fpr, tpr) in curves.items():
        ax.plot(np.clip(np.asarray(fpr, dtype=float), min_rate, 1.0),
                np.clip(np.asarray(tpr, dtype=float), min_rate, 1.0), label=label, linewidth=1.2)
    ax.plot([min_rate, 1.0], [min_rate, 1.0], color="grey", linestyle="--", linewidth=0.8,
            label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(min_rate, 1.0)
    ax.set_ylim(min_rate, 1.0)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path

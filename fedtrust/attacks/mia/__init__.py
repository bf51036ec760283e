"""Membership inference: black-box score attacks (the paper's Table 2) and update attacks.

* :func:`run_blackbox_mia`: confidence, loss, entropy and modified-entropy
  attacks on a model's outputs, with thresholds calibrated globally or per class
  on a split disjoint from the evaluated samples.
* :func:`run_update_mia`: a server-side attack on one intercepted (possibly
  compressed) client update.

Both return :class:`MIAResult` rows (balanced accuracy, ROC AUC, TPR at 1% and
0.1% FPR); :class:`~fedtrust.attacks.mia.report.MIAReport` records them in a run folder
(``mia.csv``, :class:`fedtrust.records.MIARow`) and :func:`plot_results_roc` draws them.
"""

from fedtrust.attacks.mia.blackbox import run_blackbox_mia
from fedtrust.attacks.mia.metrics import (
    allowed_false_positives,
    balanced_accuracy,
    plot_roc,
    roc_auc,
    roc_counts,
    roc_curve,
    tpr_at_fpr,
)
from fedtrust.attacks.mia.result import MIAResult, evaluate_scores, plot_results_roc
from fedtrust.attacks.mia.sampling import (
    MembershipSplit,
    draw_membership_split,
    heldout_indices,
)
from fedtrust.attacks.mia.scores import (
    ATTACKS,
    attack_scores,
    compute_outputs,
    confidence_score,
    entropy_score,
    loss_score,
    modified_entropy_score,
)
from fedtrust.attacks.mia.thresholds import (
    ATTACKER_FPR,
    SCOPES,
    CalibrationSet,
    ThresholdRule,
    best_threshold,
    calibration_set,
    fit_thresholds,
)
from fedtrust.attacks.mia.update_attack import (
    UPDATE_ATTACKS,
    ObservedPiece,
    UpdateScores,
    observed_pieces,
    per_sample_gradients,
    run_update_mia,
    update_scores,
)

__all__ = [
    "ATTACKER_FPR",
    "ATTACKS",
    "SCOPES",
    "UPDATE_ATTACKS",
    "CalibrationSet",
    "MIAResult",
    "MembershipSplit",
    "ObservedPiece",
    "ThresholdRule",
    "UpdateScores",
    "allowed_false_positives",
    "attack_scores",
    "balanced_accuracy",
    "best_threshold",
    "calibration_set",
    "compute_outputs",
    "confidence_score",
    "draw_membership_split",
    "entropy_score",
    "evaluate_scores",
    "fit_thresholds",
    "heldout_indices",
    "loss_score",
    "modified_entropy_score",
    "observed_pieces",
    "per_sample_gradients",
    "plot_results_roc",
    "plot_roc",
    "roc_auc",
    "roc_counts",
    "roc_curve",
    "run_blackbox_mia",
    "run_update_mia",
    "tpr_at_fpr",
    "update_scores",
]

"""Black-box membership inference on a trained model: the paper's Table 2.

The attacker queries the final (global) model on candidate samples and decides
membership from its outputs with calibrated thresholds (see
:mod:`fedtrust.attacks.mia.scores` and :mod:`fedtrust.attacks.mia.thresholds`).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from fedtrust.attacks.mia.result import MIAResult, evaluate_scores
from fedtrust.attacks.mia.sampling import MembershipSplit, draw_membership_split
from fedtrust.attacks.mia.scores import ATTACKS, attack_scores, compute_outputs
from fedtrust.attacks.mia.thresholds import SCOPES

__all__ = ["MIAResult", "run_blackbox_mia"]


def run_blackbox_mia(model: nn.Module, member_x: torch.Tensor, member_y: torch.Tensor,
                     nonmember_x: torch.Tensor, nonmember_y: torch.Tensor, *, num_classes: int,
                     seed: int, calibration_fraction: float = 0.5,
                     device: torch.device | str | None = None, progress: bool = True,
                     batch_size: int = 256, max_per_side: int | None = None,
                     split: MembershipSplit | None = None) -> list[MIAResult]:
    """Score-based attacks on ``model`` with global and per-class thresholds.

    Equally many members and non-members (the smaller pool's size, or
    ``max_per_side``) are drawn with ``seed`` and split, stratified, into a
    calibration part (thresholds) and a disjoint evaluation part (metrics).

    Parameters
    ----------
    model:
        The attacked classifier (its mode is restored afterwards).
    member_x, member_y:
        Samples the clients trained on, and their labels.
    nonmember_x, nonmember_y:
        Held-out samples no client saw, and their labels.
    num_classes:
        Output classes of ``model`` (checked against its logits).
    seed:
        Seed of the draw and of the calibration/evaluation split.
    calibration_fraction:
        Share of each side used to choose thresholds.
    device:
        Where to run the model; ``None``: where its parameters are.
    progress:
        Show a progress bar over the candidates.
    batch_size:
        Samples per forward pass.
    max_per_side:
        Cap on the members (and non-members) drawn.
    split:
        The candidates and their calibration/evaluation parts, when the caller drew them
        (to attack the same candidates otherwise); ``seed``, ``calibration_fraction`` and
        ``max_per_side`` are then not used for the draw.

    Returns
    -------
    list[MIAResult]
        One per attack in :data:`~fedtrust.attacks.mia.scores.ATTACKS` and
        scope in :data:`~fedtrust.attacks.mia.thresholds.SCOPES` (``global``, ``per_class``:
        oracle thresholds; ``nonmember``: the attacker's, from non-members only), in that order.
    """
    if len(member_x) != len(member_y) or len(nonmember_x) != len(nonmember_y):
        raise ValueError("inputs and labels must have the same length")
    if split is None:
        split = draw_membership_split(len(member_x), len(nonmember_x), seed=seed,
                                      calibration_fraction=calibration_fraction, max_per_side=max_per_side)
    mem = torch.as_tensor(split.members)
    non = torch.as_tensor(split.nonmembers)
    labels = torch.cat([torch.as_tensor(member_y)[mem], torch.as_tensor(nonmember_y)[non]]).long()
    parts = []
    with tqdm(total=split.num_candidates, desc="black-box MIA", disable=not progress,
              leave=False) as bar:
        for x, idx in ((member_x, mem), (nonmember_x, non)):
            for i in range(0, len(idx), batch_size):
                chunk = idx[i:i + batch_size]
                parts.append(compute_outputs(model, x[chunk], batch_size=batch_size, device=device))
                bar.update(len(chunk))
    logits = torch.cat(parts)
    if logits.shape[1] != num_classes:
        raise ValueError(f"model returns {logits.shape[1]} logits, num_classes={num_classes}")
    scores = attack_scores(logits, labels)
    is_member = split.is_member
    return [evaluate_scores(attack, scope, scores[attack], labels.numpy(), is_member, split)
            for attack in ATTACKS for scope in SCOPES]


"""LiRA and RMIA on a trained model: reference models, signals, scores, shadow thresholds.

The threat model (Carlini et al. 2022): the attacker holds the candidate samples (not
their membership) and population data that the target never trained on. It trains
reference models the way the target was trained, each on a seeded half of the
candidates (:mod:`fedtrust.attacks.mia.reference`), so every candidate is IN for
about half of them and OUT for the rest; offline variants use the OUT models only.
RMIA's population samples ``z`` are the population data (OUT for every model).

Thresholds the attacker can set: reference model 0 plays the target. Its training
half is known to the attacker, so the attack's scores for it (computed with the other
reference models) and their membership give the threshold of best balanced accuracy
(``threshold = "shadow"``), which is then applied to the real target's scores. AUC
and TPR at low FPR need no threshold. With a single reference model there is no shadow
and the accuracy is NaN (``threshold = "none"``).

Rows (``scope = "reference"``): ``lira_online``, ``lira_offline`` (every reference
model), ``rmia_online`` and ``rmia_offline`` (every reference model; with more than
two, again with the first two, as RMIA's paper claims it needs no more).

Offline RMIA's correction ``a`` (``Pr(x) = (1 + a)/2 Pr_OUT(x) + (1 - a)/2``) is tuned
as RMIA's authors tune it, on the reference models alone (:func:`tune_offline_a`:
reference model 0 as the target, best AUC over ``a`` = 0, 0.1, ..., 1); the run's log
names the ``a`` chosen. With one reference model it stays 1 (no correction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedtrust.attacks.mia.metrics import balanced_accuracy, roc_auc
from fedtrust.attacks.mia.reference import ReferenceModels, ReferenceSpec, train_reference_models
from fedtrust.attacks.mia.reference_attacks import (
    lira_scores,
    logit_scaled_confidence,
    rmia_scores,
    true_label_probability,
)
from fedtrust.attacks.mia.result import MIAResult, scored_result
from fedtrust.attacks.mia.scores import compute_outputs
from fedtrust.attacks.mia.thresholds import best_threshold

log = logging.getLogger(__name__)

#: The reference attacks, in row order.
REFERENCE_ATTACKS = ("lira_online", "lira_offline", "rmia_online", "rmia_offline")
#: RMIA's offline correction where it cannot be tuned (one reference model; 1: none).
RMIA_OFFLINE_A = 1.0
#: The values of ``a`` offline RMIA is tuned over (:func:`tune_offline_a`).
OFFLINE_A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


Signals = tuple[np.ndarray, np.ndarray]  # (phi, p): LiRA's and RMIA's signal of the same outputs


def _signals(logits: torch.Tensor, labels: torch.Tensor) -> Signals:
    return logit_scaled_confidence(logits, labels), true_label_probability(logits, labels)


def _stack(rows: list[Signals]) -> Signals:
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _rows(signals: Signals, start: int, stop: int | None) -> Signals:
    return signals[0][start:stop], signals[1][start:stop]


def _row(signals: Signals, i: int) -> Signals:
    return signals[0][i], signals[1][i]


def _scores(attack: str, target: tuple[np.ndarray, np.ndarray], target_pop: tuple[np.ndarray, np.ndarray],
            refs: tuple[np.ndarray, np.ndarray], refs_pop: tuple[np.ndarray, np.ndarray],
            ref_in: np.ndarray, offline_a: float = RMIA_OFFLINE_A) -> np.ndarray:
    """One attack's scores; signals are ``(phi, p)`` pairs (targets ``(n,)``, references ``(m, n)``)."""
    if attack.startswith("lira"):
        return lira_scores(target[0], refs[0], ref_in, online=attack == "lira_online")
    return rmia_scores(target[1], refs[1], ref_in, target_pop[1], refs_pop[1], online=attack == "rmia_online",
                       offline_a=offline_a)


def tune_offline_a(ref_sig: Signals, ref_pop: Signals, ref_in: np.ndarray) -> float:
    """Offline RMIA's ``a`` as its authors set it, on reference models alone: reference model 0
    plays the target, the others are its references, and the ``a`` of :data:`OFFLINE_A_GRID`
    whose scores give the highest AUC against model 0's known training half wins (ties: the
    larger ``a``, the smaller correction). Needs at least two reference models."""
    if ref_in.shape[0] < 2:
        raise ValueError("tuning a needs at least 2 reference models (one plays the target)")
    aucs = {a: roc_auc(_scores("rmia_offline", _row(ref_sig, 0), _row(ref_pop, 0), _rows(ref_sig, 1, None),
                               _rows(ref_pop, 1, None), ref_in[1:], offline_a=a), ref_in[0])
            for a in OFFLINE_A_GRID}
    best = max(aucs.values())
    return max(a for a, auc in aucs.items() if auc >= best - 1e-12)


def run_reference_mia(model: nn.Module, candidates_x: torch.Tensor, candidates_y: torch.Tensor,
                      is_member: np.ndarray, population_x: torch.Tensor, population_y: torch.Tensor,
                      spec: ReferenceSpec, cache_dir: str | Path, *, evaluate: np.ndarray | None = None,
                      seed: int = 0,
                      device: torch.device | str | None = None, batch_size: int = 256,
                      progress: Callable[[int, int], None] | None = None) -> tuple[list[MIAResult], ReferenceModels]:
    """LiRA and RMIA against ``model`` on the candidates; their reference models.

    Parameters
    ----------
    model:
        The target.
    candidates_x, candidates_y, is_member:
        The candidates (the reference models' pool) and their membership (used only to
        score the attacks).
    population_x, population_y:
        Data the target never trained on (RMIA's ``z``); disjoint from the candidates.
    spec:
        How the reference models are trained (``count`` >= 1).
    cache_dir:
        Where reference models are cached.
    evaluate:
        The candidates the metrics are computed on (default: all); every candidate is in the
        reference models' pool either way. The run passes the black-box attacks' evaluation
        part, so that every attack of ``mia.csv`` is measured on the same candidates.
    seed:
        Seed of the metrics' bootstrap intervals.
    """
    is_member = np.asarray(is_member, dtype=bool).reshape(-1)
    if len(candidates_x) != len(candidates_y) or len(candidates_x) != is_member.size:
        raise ValueError("candidates, their labels and is_member must have one entry per candidate")
    if len(population_x) < 1 or len(population_x) != len(population_y):
        raise ValueError("RMIA needs population samples with labels")
    home = device if device is not None else next(model.parameters()).device
    refs = train_reference_models(spec, candidates_x, candidates_y, cache_dir, device=home, progress=progress)
    cand_y, pop_y = torch.as_tensor(candidates_y).long(), torch.as_tensor(population_y).long()

    def outputs(net: nn.Module) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return (_signals(compute_outputs(net, candidates_x, batch_size=batch_size, device=home), cand_y),
                _signals(compute_outputs(net, population_x, batch_size=batch_size, device=home), pop_y))

    target, target_pop = outputs(model)
    per_ref = [outputs(refs.model(i, home)) for i in range(spec.count)]
    ref_sig, ref_pop = _stack([c for c, _ in per_ref]), _stack([p for _, p in per_ref])

    ev = np.arange(is_member.size) if evaluate is None else np.asarray(evaluate, dtype=np.int64)
    results: list[MIAResult] = []
    for count in ([spec.count] if spec.count <= 2 else [spec.count, 2]):
        for attack in REFERENCE_ATTACKS:
            if count != spec.count and not attack.startswith("rmia"):
                continue
            if attack == "lira_online" and count < 2:
                continue  # an IN and an OUT model per candidate are needed
            a = RMIA_OFFLINE_A
            if attack == "rmia_offline" and count >= 2:
                a = tune_offline_a(_rows(ref_sig, 0, count), _rows(ref_pop, 0, count), refs.pool_in[:count])
                log.info("offline RMIA with %d reference models: a = %.1f (tuned on the reference models)", count, a)
            scores = _scores(attack, target, target_pop, _rows(ref_sig, 0, count), _rows(ref_pop, 0, count),
                             refs.pool_in[:count], offline_a=a)
            accuracy, how, threshold = float("nan"), "none", None
            if count >= 2:  # reference model 0 plays the target; the others are its references
                shadow = _scores(attack, _row(ref_sig, 0), _row(ref_pop, 0), _rows(ref_sig, 1, count),
                                 _rows(ref_pop, 1, count), refs.pool_in[1:count], offline_a=a)
                threshold = best_threshold(shadow, refs.pool_in[0])
                s_ev, m_ev = scores[ev], is_member[ev]
                accuracy = balanced_accuracy(s_ev >= threshold, m_ev)
                how = "shadow"
            results.append(scored_result(attack, "reference", scores[ev], is_member[ev], accuracy=float(accuracy),
                                         threshold=how, threshold_value=threshold, reference_models=count,
                                         seed=seed))
    return results, refs

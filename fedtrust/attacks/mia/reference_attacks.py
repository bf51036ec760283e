"""Membership attacks that compare a sample's score with reference models: LiRA and RMIA.

Both take per-sample signals of the target model and of ``m`` reference models trained
the way the target was (:mod:`fedtrust.attacks.mia.reference`), with the mask of which
reference models had each sample in their training data (``ref_in``, ``(m, n)``).

LiRA (Carlini et al. 2022, "Membership inference attacks from first principles")
------------------------------------------------------------------------------
Signal: the logit-scaled confidence of the true label, ``phi = log(p / (1 - p))``,
computed stably from logits as ``z_y - logsumexp(z_{j != y})``
(:func:`logit_scaled_confidence`). Per sample, Gaussians are fitted to the reference
models' ``phi`` with the sample IN (``mu_in, sd_in``) and OUT (``mu_out, sd_out``).

* online: ``score = log N(phi; mu_in, sd_in^2) - log N(phi; mu_out, sd_out^2)``;
* offline (OUT models only): the one-sided test ``score = (phi - mu_out) / sd_out``
  (large when the target is more confident than models that never saw the sample).

With few reference models the per-sample variances are noisy; as the paper recommends
below 64 models, ``global_variance=True`` (the default) uses one variance per side,
pooled over all samples. Departures from the authors' code: no augmentations (the
issue asks augmentation-free by default), and offline uses the one-sided z statistic of
the paper rather than the code's ``-log N(phi; mu_out, sd_out^2)`` (two-sided). A
sample with no IN (or no OUT) reference model gets the pooled mean of that side.

RMIA (Zarifzadeh et al. 2024, "Low-cost high-power membership inference attacks")
--------------------------------------------------------------------------------
Signal: the probability of the true label, ``Pr(x | theta)``. ``Pr(x)`` is the mean of
the reference models' ``Pr(x | theta_ref)``; offline (OUT models only) it is corrected
linearly, ``Pr(x) = (1 + a) / 2 * mean_out + (1 - a) / 2`` (the paper's approximation of
the IN models it lacks; ``a`` is its offline parameter). With the likelihood ratio
``LR(x) = Pr(x | theta) / Pr(x)`` and the same for population samples ``z`` (known
non-members of the target), the score is the fraction of ``z`` with
``LR(x) / LR(z) >= gamma`` (ties among the ``k + 1`` possible fractions broken by ``LR(x)``,
within 1e-9). The reference paper's defaults: ``gamma = 1``; ``a`` tuned per data set
(0.3 to 1; ``a = 1`` means no correction).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Below this many reference models LiRA pools its variances (Carlini et al. 2022, Sec. VI).
GLOBAL_VARIANCE_BELOW = 64
_TINY = 1e-30


def _logits(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(logits).detach().cpu().to(torch.float64)


def logit_scaled_confidence(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """LiRA's signal per sample: ``log(p_y / (1 - p_y))`` = ``z_y - logsumexp(z_{j != y})``."""
    z = _logits(logits)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.numel():
        raise ValueError(f"logits {tuple(z.shape)} and {y.numel()} labels do not match")
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def true_label_probability(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """RMIA's signal per sample: the softmax probability of the true label."""
    z = _logits(logits)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    return torch.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1).numpy()


def _check(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    refs = np.asarray(refs, dtype=np.float64)
    ref_in = np.asarray(ref_in, dtype=bool)
    if refs.ndim != 2 or refs.shape[1] != target.size or ref_in.shape != refs.shape:
        raise ValueError(f"reference signals {refs.shape} and masks {ref_in.shape} must be (models, {target.size})")
    if refs.shape[0] < 1:
        raise ValueError("at least one reference model is needed")
    if not (np.isfinite(target).all() and np.isfinite(refs).all()):
        raise ValueError("signals must be finite")
    return target, refs, ref_in


def _side(refs: np.ndarray, mask: np.ndarray, global_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and standard deviation of the reference signals where ``mask``."""
    count = mask.sum(axis=0)
    pooled_mean = refs[mask].mean() if mask.any() else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, (refs * mask).sum(axis=0) / np.maximum(count, 1), pooled_mean)
    dev = (refs - mean[None]) * mask
    # the pooled variance: squared deviations from each sample's own mean, over the degrees
    # of freedom left (one mean per sample that has signals on this side)
    dof = int(mask.sum()) - int((count > 0).sum())
    pooled = math.sqrt(float((dev ** 2).sum()) / dof) if dof > 0 else 1.0
    if global_variance:
        return mean, np.full(refs.shape[1], max(pooled, _TINY))
    sd = np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count - 1, 1))
    return mean, np.where(count > 1, np.maximum(sd, _TINY), max(pooled, _TINY))


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def lira_scores(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray, *, online: bool = True,
                global_variance: bool | None = None) -> np.ndarray:
    """LiRA scores (higher: more likely a member) of ``n`` samples.

    Parameters
    ----------
    target:
        The target model's :func:`logit_scaled_confidence` per sample, ``(n,)``.
    refs:
        The reference models' ``(m, n)``.
    ref_in:
        ``(m, n)``: whether reference model ``i`` trained on sample ``j``.
    online:
        Use the IN models too (the likelihood ratio); ``False``: the offline one-sided test.
    global_variance:
        Pool the variances (default: when fewer than :data:`GLOBAL_VARIANCE_BELOW` models).
    """
    target, refs, ref_in = _check(target, refs, ref_in)
    pooled = refs.shape[0] < GLOBAL_VARIANCE_BELOW if global_variance is None else bool(global_variance)
    mu_out, sd_out = _side(refs, ~ref_in, pooled)
    if not online:
        return (target - mu_out) / sd_out
    if not ref_in.any():
        raise ValueError("online LiRA needs reference models that trained on the samples (ref_in)")
    mu_in, sd_in = _side(refs, ref_in, pooled)
    return _log_normal(target, mu_in, sd_in) - _log_normal(target, mu_out, sd_out)


def rmia_scores(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray, population_target: np.ndarray,
                population_refs: np.ndarray, *, online: bool = False, offline_a: float = 1.0,
                gamma: float = 1.0) -> np.ndarray:
    """RMIA scores (higher: more likely a member) of ``n`` samples against ``k`` population samples.

    Parameters
    ----------
    target, refs, ref_in:
        :func:`true_label_probability` of the target ``(n,)`` and of the reference models
        ``(m, n)``, and which reference model trained on which sample.
    population_target, population_refs:
        The same for the population samples ``z`` ``(k,)`` and ``(m, k)``: data none of the
        models trained on (every reference model is OUT for them).
    online:
        ``Pr(x)`` from every reference model; ``False``: from the OUT models, corrected by ``a``.
    offline_a:
        The offline correction ``a`` in ``[0, 1]`` (1: none).
    gamma:
        The pairwise threshold (``>= 1`` in the paper).
    """
    target, refs, ref_in = _check(target, refs, ref_in)
    pop_t = np.asarray(population_target, dtype=np.float64).reshape(-1)
    pop_r = np.asarray(population_refs, dtype=np.float64)
    if pop_r.shape != (refs.shape[0], pop_t.size) or pop_t.size < 1:
        raise ValueError(f"population signals {pop_r.shape} must be (models={refs.shape[0]}, {pop_t.size} > 0)")
    if not 0.0 <= offline_a <= 1.0 or not gamma > 0:
        raise ValueError(f"offline_a={offline_a!r} must lie in [0, 1] and gamma={gamma!r} be > 0")

    def marginal(signals: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if online:
            return signals.mean(axis=0)
        count = mask.sum(axis=0)
        pooled = signals[mask].mean() if mask.any() else 0.0  # a sample with no OUT model
        out = np.where(count > 0, (signals * mask).sum(axis=0) / np.maximum(count, 1), pooled)
        return (1 + offline_a) / 2 * out + (1 - offline_a) / 2

    ratio_x = target / np.maximum(marginal(refs, ~ref_in), _TINY)
    ratio_z = np.sort(pop_t / np.maximum(marginal(pop_r, np.ones_like(pop_r, dtype=bool)), _TINY))
    # fraction of z with LR(x) / LR(z) >= gamma, i.e. LR(z) <= LR(x) / gamma; it takes only
    # k + 1 values, so ties (every x above all of z scores 1) are broken by LR(x) itself,
    # within 1e-9: the order is then LR(x)'s, which the fraction is monotone in
    fraction = np.searchsorted(ratio_z, ratio_x / gamma, side="right") / ratio_z.size
    return fraction + 1e-9 * (ratio_x / (1.0 + ratio_x))

"""Score-based black-box membership inference from a model's outputs.

Every score follows one convention: **higher = more likely a member**. Scores
that are naturally "lower for members" (loss, entropy, modified entropy) are
negated.

Attacks
-------
``confidence``
    Softmax probability of the true class (Shokri et al. 2017; Salem et al.
    2019): models are more confident on their training samples. This is the
    paper's "Prediction MIA".
``loss``
    Negative cross-entropy of the true class (Yeom et al. 2018): training
    samples have lower loss. The paper's "Loss MIA".
``entropy``
    Negative Shannon entropy of the predicted distribution (Salem et al. 2019;
    Song & Mittal 2021): predictions on training samples are peakier.
``modified_entropy``
    Negative modified entropy ``Mentr`` (Song & Mittal 2021, eq. 4), which also
    uses the true label: ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``.
    It is monotone in the correct direction for both correct and wrong
    predictions, unlike plain entropy. The paper's "Cross-Entropy MIA" is the
    closest of these to a label-aware entropy score; ``loss`` is the plain
    cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Names of the score-based attacks, in report order.
ATTACKS: tuple[str, ...] = ("confidence", "loss", "entropy", "modified_entropy")


@torch.no_grad()
def compute_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                    batch_size: int = 256, device: torch.device | str | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``x``, batched, in eval mode, without gradients.

    The model runs on ``device`` and is moved back, with its train/eval mode restored, afterwards.

    Parameters
    ----------
    model:
        A classifier returning logits ``(N, C)``.
    x:
        Inputs ``(N, ...)`` (any device).
    y:
        Labels ``(N,)``; only checked against ``x``'s length (the logits do not
        depend on them).
    batch_size:
        Samples per forward pass.
    device:
        Where to run the model; ``None`` uses the device of its first parameter.

    Returns
    -------
    torch.Tensor
        ``float32`` logits ``(N, C)`` on the CPU.
    """
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = model.training
    model.to(device).eval()
    try:
        chunks = [model(x[i:i + batch_size].to(device)).float().cpu()
                  for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training).to(home)
    if not chunks:
        raise ValueError("compute_outputs needs at least one sample")
    return torch.cat(chunks)


def _as_logits(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(logits).detach().cpu().to(torch.float64)
    if t.ndim != 2 or t.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got shape {tuple(t.shape)}")
    return t


def _as_labels(labels: torch.Tensor | np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if len(y) != len(logits):
        raise ValueError(f"{len(logits)} logits but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    return y


def confidence_score(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Softmax probability of the true class (higher = member)."""
    z = _as_logits(logits)
    y = _as_labels(labels, z)
    return torch.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1).numpy()


def loss_score(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Negative cross-entropy of the true class (higher = member)."""
    z = _as_logits(logits)
    y = _as_labels(labels, z)
    return (-F.cross_entropy(z, y, reduction="none")).numpy()


def entropy_score(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Negative Shannon entropy (nats) of the predicted distribution (higher = member).

    ``labels`` are accepted for a uniform signature and checked, but unused.
    """
    z = _as_logits(logits)
    _as_labels(labels, z)
    logp = torch.log_softmax(z, dim=1)
    return (torch.exp(logp) * logp).sum(1).numpy()


def _log_one_minus_softmax(z: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(z))`` computed stably as ``logsumexp_{j != i} z_j - logsumexp_j z_j``.

    One class at a time, so memory stays ``O(N C)``.
    """
    total = torch.logsumexp(z, dim=1)
    out = torch.empty_like(z)
    masked = z.clone()
    for i in range(z.shape[1]):
        masked[:, i] = -torch.inf
        out[:, i] = torch.logsumexp(masked, dim=1) - total
        masked[:, i] = z[:, i]
    return out


def modified_entropy_score(logits: torch.Tensor | np.ndarray,
                           labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Negative modified entropy ``-Mentr(p, y)`` (Song & Mittal 2021) (higher = member).

    ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``, in nats,
    computed from log-probabilities so that saturated outputs stay finite.
    """
    z = _as_logits(logits)
    y = _as_labels(labels, z)
    logp = torch.log_softmax(z, dim=1)
    p = torch.exp(logp)
    log1mp = _log_one_minus_softmax(z)
    true = torch.zeros_like(p, dtype=torch.bool).scatter_(1, y[:, None], True)
    # true class: (1 - p_y) log p_y; others: p_i log(1 - p_i)
    terms = torch.where(true, torch.exp(log1mp) * logp, p * log1mp)
    return terms.sum(1).numpy()


#: Attack name -> score function ``(logits, labels) -> scores``.
SCORE_FUNCTIONS: dict[str, Callable[[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray], np.ndarray]] = {
    "confidence": confidence_score,
    "loss": loss_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
}


def attack_scores(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                  attacks: tuple[str, ...] = ATTACKS) -> dict[str, np.ndarray]:
    """Scores of several attacks on the same outputs.

    Parameters
    ----------
    logits:
        Model outputs ``(N, C)``.
    labels:
        True classes ``(N,)``.
    attacks:
        Names from :data:`ATTACKS`.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``attack -> float64 scores (N,)``, higher = more likely a member.
    """
    unknown = [a for a in attacks if a not in SCORE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; allowed: {', '.join(ATTACKS)}")
    return {a: SCORE_FUNCTIONS[a](logits, labels) for a in attacks}

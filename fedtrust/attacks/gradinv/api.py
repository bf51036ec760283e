"""The one entry point: invert an update as the server intercepted it.

:func:`attack` takes an :class:`~fedtrust.interception.InterceptedUpdate` (what an
honest-but-curious server holds of one client's update), the model architecture, the
attack settings and an attacker, and returns the reconstructed images:

1. the model gets the weights the client computed its update on
   (``intercepted.global_state``, loaded into a copy);
2. the attacker's views of the update
   (:func:`~fedtrust.attacks.gradinv.targets.build_views`): the naive attacker matches the
   server's decoded update ``intercepted.decoded``, the adaptive one the arrays the client
   sent (``intercepted.payload``) through its codec (``intercepted.spec``,
   ``intercepted.public_state``);
3. the labels: given by the caller, or inferred from the decoded update's last layer
   (:mod:`fedtrust.attacks.gradinv.labels`);
4. Geiping et al.'s optimisation (:func:`~fedtrust.attacks.gradinv.reconstruct.reconstruct_batch`,
   the low-level entry point for many prepared problems at once);
5. with ground truth, each reconstruction is matched to a true image and scored
   (:func:`fedtrust.metrics.score_batch`).

The number of images behind the update is what the server knows: the training config's
``batch-size`` capped by ``num-examples`` (FedSGD's batch). ``intercepted.batch_indices``
is never read here: it is for scoring only, and the caller looks the ground truth up
with it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.labels import infer_labels
from fedtrust.attacks.gradinv.reconstruct import Problem, reconstruct_batch
from fedtrust.attacks.gradinv.targets import ATTACKERS, build_views, surrogate_views
from fedtrust.interception import InterceptedUpdate
from fedtrust.metrics import score_batch
from fedtrust.training import model_layout

if TYPE_CHECKING:
    from fedtrust.data.specs import DatasetSpec


@dataclass(frozen=True)
class GradInvResult:
    """What one gradient-inversion attack produced.

    Attributes
    ----------
    images:
        ``(N, C, H, W)`` reconstructions in [0, 1] (denormalised), on the CPU.
    labels:
        ``(N,)`` labels used for the reconstruction.
    label_inferred:
        Whether ``labels`` were inferred from the update (else given).
    loss:
        Final gradient-matching cost of the kept start (without the prior).
    scores:
        Per reconstruction ``{"index", "matched", "ssim", "psnr", "mse"}`` against
        the ground truth (after Hungarian matching); ``None`` without ground truth.
    seconds:
        Wall-clock seconds of the optimisation and the scoring.
    iterations:
        Optimisation steps.
    attacker:
        ``"naive"`` or ``"adaptive"``.
    restart:
        Which start was kept.
    batched:
        Whether it ran vectorised (with its other starts).
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_inferred: bool
    loss: float
    scores: list[dict[str, float | int]] | None
    seconds: float
    iterations: int
    attacker: str
    restart: int
    batched: bool


def batch_size(intercepted: InterceptedUpdate) -> int:
    """Images behind an intercepted update, as the server knows it: the training config's
    ``batch-size`` capped by ``num-examples`` (for a FedAvg update over several steps an
    approximation: the update mixes them all)."""
    config = intercepted.train_config
    batch = int(config.get("batch-size", 1))
    examples = int(config.get("num-examples", batch) or batch)
    return max(1, min(batch, examples))


def attack(intercepted: InterceptedUpdate, model: nn.Module, config: GradInvConfig, attacker: str, *,
           dataset: DatasetSpec, labels: torch.Tensor | None = None, ground_truth: torch.Tensor | None = None,
           device: torch.device | None = None, progress: bool = True) -> GradInvResult:
    """Reconstruct the images behind an intercepted update (Geiping et al. 2020).

    Parameters
    ----------
    intercepted:
        The update as the server holds it (from the strategy or :meth:`InterceptedUpdate.load`).
    model:
        The run's architecture; a copy gets ``intercepted.global_state`` (``model`` is not changed).
    config:
        Attack settings; ``config.label_strategy`` says whether ``labels`` are given.
    attacker:
        ``"naive"`` (matches the decoded dense update) or ``"adaptive"`` (matches what
        was sent, knowing the compressor).
    dataset:
        The data set's spec: image shape and the model inputs' normalisation.
    labels:
        ``(N,)`` true labels of the batch for ``label_strategy="given"`` (the caller
        looks them up with the scoring-only ``batch_indices``); ``None`` for ``"infer"``.
    ground_truth:
        ``(N, C, H, W)`` float images in [0, 1] of the batch, for scoring only.
    device:
        Where to run (``None``: :func:`fedtrust.training.select_device`'s ``"auto"``).
    progress:
        Show a tqdm bar over the iterations.

    Raises
    ------
    ValueError
        An unknown attacker, labels that do not fit ``config.label_strategy`` or the
        batch, or an update that gives the attacker nothing to match.
    """
    if attacker not in ATTACKERS:
        raise ValueError(f"attacker={attacker!r} is not known; allowed: {', '.join(ATTACKERS)}")
    net = copy.deepcopy(model)
    net.load_state_dict(intercepted.global_state)
    observed = dict(decoded=intercepted.decoded, arrays=intercepted.payload, spec=intercepted.spec,
                    public_state=intercepted.public_state)
    views = build_views(attacker, model_layout(net), **observed)
    if not views:
        raise ValueError("the intercepted update gives the attacker nothing to match")
    surrogates = surrogate_views(attacker, model_layout(net), views, **observed) if config.naive_start else ()
    label_t = _labels(intercepted, config.label_strategy, labels)
    start = time.perf_counter()
    problem = Problem(views=tuple(views), labels=label_t, surrogates=surrogates)
    (rec,) = reconstruct_batch(net, [problem], config=config,
                               dataset=dataset, device=device, progress=progress)
    scores = score_batch(rec.images, ground_truth.detach().cpu().float()) if ground_truth is not None else None
    return GradInvResult(images=rec.images, labels=label_t.clone(), label_inferred=config.label_strategy == "infer", loss=rec.loss,
                         scores=scores, seconds=time.perf_counter() - start, iterations=rec.iterations,
                         attacker=attacker, restart=rec.restart, batched=rec.batched)


def _labels(intercepted: InterceptedUpdate, strategy: str, labels: torch.Tensor | None) -> torch.Tensor:
    """The labels the attack uses: ``labels`` (``"given"``) or inferred from the decoded update (``"infer"``)."""
    num_images = batch_size(intercepted)
    if strategy == "infer":
        if labels is not None:
            raise ValueError("labels= are for label_strategy='given'; with 'infer' the attack reads them "
                             "off the update")
        return infer_labels(intercepted.decoded, num_images)
    if labels is None:
        raise ValueError("label_strategy='given' needs labels=; or use label_strategy='infer'")
    given = labels.detach().cpu().reshape(-1).to(torch.int64)
    if len(given) != num_images:
        raise ValueError(f"{len(given)} labels given for a batch of {num_images} images")
    return given

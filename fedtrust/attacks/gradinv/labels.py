"""Label inference from the last layer's gradient (no optimisation).

The last layer of a classifier is ``logits = W h + b`` with ``h >= 0`` (after a
ReLU and pooling). For cross-entropy, the gradient of row ``i`` of ``W`` for one
image is ``(p_i - y_i) h^T``, so its row sum ``(p_i - y_i) sum(h)`` is negative
exactly for the true class and positive for every other class.

One image: iDLG (Zhao et al. 2020, "iDLG: Improved Deep Leakage from Gradients"):
the label is the index of the negative entry (the minimum) of the row sums of the
last layer's weight gradient.

A batch: LLG (Wainakh et al. 2022, "User-Level Label Leakage from Gradients in
Federated Learning", the "simple" variant, as in Geiping's ``breaching``). The
row sums are ``s_i = (1/N) sum_n (p_ni - y_ni) S_n`` with ``S_n = sum(h_n)``. The
negative part of ``s`` estimates the impact of one image,
``m = (1 + 1/C) sum_i min(s_i, 0) / N``; every class with ``s_i < 0`` gets one
label (stage 1) and its ``s_i`` is corrected by ``-m``; then the class with the
smallest corrected ``s_i`` gets the next label and is corrected again, until
``N`` labels are drawn (stage 2). This is a bias-corrected count: the softmax's
positive share ``p_ni S_n`` in every row is offset by the per-image impact.
Both methods only need the sign pattern of the update, so they also work on a
FedAvg update ``w_global - w_local`` (a descent direction) and on decoded
compressed updates, whose last layer PowerSGD keeps well (it is nearly rank 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def last_layer_name(update: Mapping[str, torch.Tensor]) -> str:
    """Name of the last layer's weight: the last 2-D tensor of the update, in order."""
    names = [name for name, t in update.items() if t.dim() == 2]
    if not names:
        raise ValueError("label inference needs a linear last layer (a 2-D weight) in the update")
    return names[-1]


def weight_row_sums(update: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Row sums of the last layer's weight gradient, one per class (float64, CPU)."""
    weight = update[last_layer_name(update)]
    return weight.detach().to("cpu", torch.float64).sum(dim=1)


def infer_labels(update: Mapping[str, torch.Tensor], num_images: int) -> torch.Tensor:
    """Labels of the images behind an update, from its last layer's weight gradient.

    Parameters
    ----------
    update:
        Dense update (gradient or ``w_global - w_local``), name -> tensor in
        model parameter order.
    num_images:
        Number of images in the batch.

    Returns
    -------
    torch.Tensor
        ``(num_images,)`` int64 labels, sorted. iDLG for one image, LLG's
        bias-corrected count for a batch (see the module docstring).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    sums = weight_row_sums(update)
    if num_images == 1:
        return sums.argmin().reshape(1)
    num_classes = sums.numel()
    impact = torch.clamp(sums, max=0.0).sum() * (1.0 + 1.0 / num_classes) / num_images
    labels: list[int] = []
    corrected = sums.clone()
    negative = torch.nonzero(sums < 0).flatten()
    # the most negative first: a compressed update can make more classes negative than images
    for cls in negative[torch.argsort(sums[negative])].tolist()[:num_images]:
        labels.append(int(cls))
        corrected[cls] -= impact
    while len(labels) < num_images:
        cls = int(corrected.argmin())
        labels.append(cls)
        corrected[cls] -= impact
    return torch.tensor(sorted(labels), dtype=torch.int64)

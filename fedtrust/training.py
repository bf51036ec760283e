"""Local computation of a client and evaluation of a model (no Flower).

An *update* is a descent direction over the model's trainable parameters:
the batch gradient for FedSGD, ``w_global - w_local`` for FedAvg (see
docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for but no CUDA GPU is available")
    return device


def model_layout(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of the trainable parameters, in order: the layout of an update."""
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad)


def server_step(local_mode: str, lr: float, server_lr: float) -> float:
    """The server's step on the mean update: ``server-lr * lr`` for FedSGD (plain SGD at
    ``lr`` when ``server-lr = 1``), ``server-lr`` for FedAvg (the update already holds the
    local steps)."""
    return server_lr * (lr if local_mode == "fedsgd" else 1.0)


def buffer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point buffers (BatchNorm running statistics), detached on the CPU."""
    return {name: b.detach().cpu().clone() for name, b in model.named_buffers()
            if b.dtype.is_floating_point}


@dataclass
class LocalResult:
    """What one client computed in one round."""

    update: dict[str, torch.Tensor]
    loss: float
    num_examples: int
    batch_indices: np.ndarray | None = None


MODEL_MODES = ("train", "eval")


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   mode: str = "train") -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean cross-entropy on one batch, the model in ``mode``.

    ``"train"``: BatchNorm normalises with the batch's statistics and updates its running
    ones (what training does); ``"eval"``: it normalises with the running statistics and
    changes nothing (the setting of Geiping et al.'s inverting-gradients code).
    """
    if mode not in MODEL_MODES:
        raise ValueError(f"mode={mode!r} is not known; allowed: {', '.join(MODEL_MODES)}")
    model.train(mode == "train")
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads, float(loss.detach())


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of a client's batch draw (FedSGD) or shuffling (FedAvg) in one round.

    ``seed * 1_000_003 + round * 1009 + partition``: below 2**63 for every seed the run
    config allows (<= 2**32 - 1) and rounds and partitions up to 2**31 - 1, so numpy's and
    torch's generators both take it.
    """
    return seed * 1_000_003 + server_round * 1009 + partition_id


def fedsgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                generator: np.random.Generator, indices: np.ndarray, mode: str = "train") -> LocalResult:
    """FedSGD: one gradient on one batch of ``batch_size`` images drawn from the partition.

    ``indices`` are the partition's train-split indices (recorded for scoring attacks);
    ``mode`` is the model's mode for the gradient (:func:`batch_gradient`).
    """
    take = generator.choice(len(x), size=min(batch_size, len(x)), replace=False)
    take_t = torch.as_tensor(take, device=x.device)
    grads, loss = batch_gradient(model, x[take_t], y[take_t], mode)
    return LocalResult(update=grads, loss=loss, num_examples=len(take), batch_indices=indices[take])


def fedavg_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int,
                 lr: float, generator: torch.Generator) -> LocalResult:
    """FedAvg: ``epochs`` of SGD at ``lr``; the update is ``w_global - w_local``."""
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    update = {name: start[name] - p.detach() for name, p in model.named_parameters() if p.requires_grad}
    return LocalResult(update=update, loss=total / max(seen, 1), num_examples=len(x))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             device: torch.device | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on ``(x, y)``."""
    device = device or next(model.parameters()).device
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return loss_sum / n, correct / n


def apply_update(state: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor],
                 step: float) -> dict[str, torch.Tensor]:
    """``w - step * update`` for the updated tensors; other entries are copied."""
    out = {k: v.clone() for k, v in state.items()}
    for name, u in update.items():
        out[name] = state[name] - step * u.to(state[name].dtype)
    return out


def weighted_mean(tensors: list[Mapping[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of dicts of tensors with the same keys (weights need not sum to 1)."""
    total = float(sum(weights))
    if not tensors or total <= 0:
        raise ValueError("weighted_mean needs at least one dict and a positive total weight")
    out: dict[str, torch.Tensor] = {}
    for name in tensors[0]:
        acc = torch.zeros_like(tensors[0][name], dtype=torch.float32)
        for t, w in zip(tensors, weights):
            acc += (w / total) * t[name].to(torch.float32)
        out[name] = acc
    return out

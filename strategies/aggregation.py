"""What one client can do to the global model, and the step the server takes.

:func:`bound_norms` refuses or clips (``max-norm-action``) a decoded update, or a change
of BatchNorm statistics, whose norm is above ``max-norm-ratio`` times the round's
lower median (:class:`fedtrust.robust.NormBound`). :func:`aggregate` steps the global
model with the weighted mean update, ``w <- w - step * sum_i n_i u_i / sum_i n_i``
(``step`` from :func:`fedtrust.training.server_step`), and averages the BatchNorm
statistics the same way; a step that leaves float32's range is refused.
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
import torch
from flwr.supercore import log

from fedtrust.robust import NormBound, Verdict, l2_norm
from fedtrust.training import apply_update, weighted_mean
from strategies.replies import ClientReply, check_finite


def _buffer_change(reply: ClientReply, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) - state[k].detach().cpu().double().numpy()
            for k, v in reply.buffers.items() if k in state}


def _judge_buffers(bound: NormBound, replies: list[ClientReply],
                   state: dict[str, torch.Tensor]) -> dict[int, Verdict]:
    """Verdicts on the BatchNorm statistics' change (clipped ones scaled back in place)."""
    with_buffers = [r for r in replies if r.buffers]
    if not with_buffers:
        return {}
    changes = [_buffer_change(r, state) for r in with_buffers]
    out: dict[int, Verdict] = {}
    for reply, change, verdict in zip(with_buffers, changes, bound.judge([l2_norm(c.values()) for c in changes])):
        out[id(reply)] = verdict
        if verdict.clipped:
            reply.buffers = {k: (state[k].detach().cpu().double().numpy() + verdict.scale * change[k]
                                 ).astype(np.asarray(v).dtype) if k in change else v
                             for k, v in reply.buffers.items()}
    return out


def bound_norms(bound: NormBound, server_round: int, replies: list[ClientReply],
                state: dict[str, torch.Tensor]) -> tuple[list[ClientReply], int, int]:
    """Refuse or clip updates, and BatchNorm statistics, far above the round's median norm.

    Returns ``(kept, refused, clipped)``; a clipped update is scaled in place and its
    ``scale`` recorded (the codec's ``end_round`` scales its contribution alike).
    """
    if not bound.active or not replies:
        return replies, 0, 0
    update_verdicts = bound.judge([l2_norm(r.decoded.values()) for r in replies])
    buffer_verdicts = _judge_buffers(bound, replies, state)
    kept: list[ClientReply] = []
    refused = clipped = 0
    for reply, verdict in zip(replies, update_verdicts):
        buffers = buffer_verdicts.get(id(reply))
        what, worst = ("update", verdict) if verdict.refused or verdict.clipped \
            else ("BatchNorm statistics' change", buffers)
        if verdict.refused or (buffers is not None and buffers.refused):
            refused += 1
            log(WARNING, "round %d: refused node %d (partition %d): %s", server_round, reply.node_id,
                reply.partition_id, worst.reason(what, bound.ratio))
            continue
        if verdict.clipped:
            reply.decoded = {k: v * verdict.scale for k, v in reply.decoded.items()}
            reply.scale = verdict.scale
        if verdict.clipped or (buffers is not None and buffers.clipped):
            clipped += 1
            log(WARNING, "round %d: clipped node %d (partition %d) to the bound: %s", server_round,
                reply.node_id, reply.partition_id, worst.reason(what, bound.ratio))
        kept.append(reply)
    return kept, refused, clipped


def aggregate(state: dict[str, torch.Tensor], replies: list[ClientReply], step: float) -> dict[str, torch.Tensor]:
    """Step the global model with the weighted mean update and average BatchNorm statistics.

    Raises :class:`strategies.replies.RejectedReply` when the result is not finite.
    """
    mean_update = weighted_mean([r.decoded for r in replies], [r.weight for r in replies])
    new_state = apply_update(state, mean_update, step)
    check_finite(new_state)  # finite updates can still step the model out of float32's range
    with_buffers = [r for r in replies if r.buffers]
    if with_buffers:
        means = weighted_mean([{k: torch.from_numpy(v) for k, v in r.buffers.items()} for r in with_buffers],
                              [r.weight for r in with_buffers])
        check_finite(means)
        for name, value in means.items():
            if name in new_state and new_state[name].shape == value.shape:
                new_state[name] = value.to(new_state[name].dtype)
    return new_state

"""One round of a codec's protocol in one process: what a server observes of each client.

The strategy runs a codec's exchanges over Flower messages
(``strategies/exchanges.py``); studies that need only what the server ends up holding
(the attack comparisons of ``experiments/attackers.py``, tests) run the same steps here
without a network: the round's broadcast, each client's exchange 0, the server's answers
and the clients' later exchanges (PowerSGD all-reduce: P, then P-hat, then Q), then the
server's decode of each payload with the public state it knows. Replies are taken in
client order, as the strategy takes them in partition order, so the same updates give
the same observations as a simulation with every client accepted and no norm bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedtrust.compression.base import Compressor
from fedtrust.compression.codec import Codec, ServerProtocol
from fedtrust.robust import NormBound


@dataclass(frozen=True)
class Observed:
    """What the server holds of one client's update after the round.

    Attributes
    ----------
    arrays:
        Every array the client sent, over all exchanges (the adaptive attacker's input).
    decoded:
        The dense update the server decoded (the naive attacker's input).
    public_state:
        What the server knows besides the arrays (PowerSGD's Q and P-hat).
    """

    arrays: dict[str, np.ndarray]
    decoded: dict[str, torch.Tensor]
    public_state: dict[str, np.ndarray]


def run_round(codec: Codec, updates: Sequence[Mapping[str, torch.Tensor]], *,
              weights: Sequence[float] | None = None, server_round: int = 1,
              server: ServerProtocol | None = None,
              compressors: Sequence[Compressor] | None = None) -> list[Observed]:
    """Compress ``updates`` (one per client, dense, in layout order) as one round of ``codec``.

    Parameters
    ----------
    codec:
        The compressor's codec for the model's layout.
    updates:
        Each client's dense update (round 1: its gradient; no residual yet).
    weights:
        Each client's weight in the server's averages (default: equal).
    server_round:
        The round number (the broadcast of round 1 is empty).
    server:
        The server's protocol state to continue from (default: a fresh one).
    compressors:
        Each client's compressor to continue from (its error-feedback residual; default:
        fresh ones, as in round 1).
    """
    if not updates:
        raise ValueError("run_round needs at least one client update")
    weights = [1.0] * len(updates) if weights is None else [float(w) for w in weights]
    if len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    server = codec.server() if server is None else server
    if compressors is None:
        compressors = [codec.compressor() for _ in updates]
    elif len(compressors) != len(updates):
        raise ValueError(f"{len(compressors)} compressors for {len(updates)} updates")
    broadcast = server.broadcast(server_round)
    payloads = [dict(codec.client_step(c, 0, u, broadcast).arrays) for c, u in zip(compressors, updates)]
    for exchange in range(1, codec.exchanges):
        answer, _ = server.respond(exchange, payloads, weights, NormBound(0.0))
        payloads = [{**p, **codec.client_step(c, exchange, None, answer).arrays}
                    for c, p in zip(compressors, payloads)]
    observed = []
    for node_id, arrays in enumerate(payloads):
        decoded, public = server.decode(node_id, arrays)
        observed.append(Observed(arrays=arrays, decoded=decoded, public_state=dict(public)))
    server.end_round(payloads, weights, [1.0] * len(payloads))
    return observed

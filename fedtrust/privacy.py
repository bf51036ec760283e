"""Client-level differential privacy: clip and noise each client's update before compression.

The mechanism (a client, each round it takes part in), with clip ``C`` and noise
multiplier ``z``::

    u  = the client's update (FedSGD: its gradient; FedAvg: its model delta), all tensors together
    u' = u * min(1, C / ||u||_2) + N(0, (z C)^2 I)

and ``u'`` is what the client compresses and sends, so the server, and so every attacker,
only ever sees a function of ``u'``. Changing the client's whole data set moves ``u`` by
at most ``2C`` in the worst case and by ``C`` when one of two neighbouring data sets is
the client's and the other empty: the add/remove-one-client neighbourhood of
client-level DP (McMahan et al. 2018), for which this is the Gaussian mechanism with
sensitivity ``C`` and noise ``z C``. Compression afterwards is post-processing and
costs no privacy. A client that takes part in ``T`` rounds composes ``T`` such
mechanisms; its guarantee (epsilon at ``delta``) is computed by Opacus's RDP accountant
(``opacus.accountants.analysis.rdp``) with sampling rate 1, since the noise protects the
client on its own, in every round it takes part, whoever else is sampled.

How it differs from Flower's DP mods (``flwr.client.mod.fixedclipping_mod``,
``LocalDpMod``, ``DifferentialPrivacyClientSideFixedClipping``): those clip (and noise)
a dense model record, the ``ArrayRecord`` of parameters a client returns, and cannot
wrap fedtrust's reply, whose payload is the codec's compressed arrays. The math is the
same as ``LocalDpMod``'s (clip the update's L2 norm, add Gaussian noise on the client);
it is applied here to the update itself, before the codec.

What it does not cover: BatchNorm running statistics, which clients send beside the
update; the run refuses DP for a model that has them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

#: Rényi orders the accountant tries (Opacus's default set).
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@dataclass(frozen=True)
class ClientDP:
    """The clip and noise each client applies to its update.

    Attributes
    ----------
    clip:
        ``C``: the largest L2 norm of an update (over all its tensors).
    noise_multiplier:
        ``z``: the noise's standard deviation is ``z * C`` per coordinate.
    delta:
        The delta at which epsilon is reported.
    """

    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"dp clip must be > 0, got {self.clip}")
        if self.noise_multiplier < 0:
            raise ValueError(f"dp noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")

    def privatize(self, update: Mapping[str, torch.Tensor], generator: torch.Generator
                  ) -> tuple[dict[str, torch.Tensor], float]:
        """``(u', ||u||)``: the clipped, noised update (same names, shapes and devices) and the norm before."""
        norm = math.sqrt(sum(float(t.detach().float().pow(2).sum()) for t in update.values()))
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        sigma = self.noise_multiplier * self.clip
        out = {}
        for name, tensor in update.items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * sigma
            out[name] = tensor.detach().float() * factor + noise.to(tensor.device)
        return out, norm

    def epsilon(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds of this mechanism (0 rounds: 0; no noise: inf)."""
        return epsilon(self.noise_multiplier, rounds, self.delta)


def noise_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """The CPU generator of a client's noise in a round: seeded from the run's seed, the round
    and the partition (mixed to the 32 bits a CPU generator keeps), so runs reproduce."""
    import numpy as np

    mixed = np.random.SeedSequence([int(seed), int(server_round), int(partition_id), 0xD1FF]).generate_state(1)[0]
    return torch.Generator(device="cpu").manual_seed(int(mixed))


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The Gaussian mechanism's epsilon at ``delta`` after ``rounds`` compositions (Opacus RDP)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=rounds, orders=_ORDERS)
    eps, _ = get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


@dataclass
class PrivacyLedger:
    """Rounds each client (partition) took part in, and the run's worst epsilon so far."""

    dp: ClientDP
    rounds_of: dict[int, int] = field(default_factory=dict)

    def spend(self, partitions: Iterable[int]) -> float:
        """One more round for each of ``partitions``; the largest epsilon of any client now."""
        for p in set(partitions):
            self.rounds_of[int(p)] = self.rounds_of.get(int(p), 0) + 1
        return self.worst()

    def worst(self) -> float:
        """The largest epsilon of any client so far."""
        return self.dp.epsilon(max(self.rounds_of.values(), default=0))

"""Interception: what an honest-but-curious server keeps of the chosen updates, and its attackers.

For each round in ``intercept-rounds`` (and the attack round) and each chosen client,
:class:`Interceptor` builds the :class:`fedtrust.interception.InterceptedUpdate` the
server sees (payload of every exchange, decoded update, global weights, training
config, compressor spec and public state; batch indices for scoring only), saves it as
``intercepted/round{R}_client{P}.pt`` (the round's global weights once, in
``intercepted/global_round{R}.pt``) and hands it to the attackers. An attacker that
fails does not stop the training: its error is logged and kept, and the run ends as
failed (the errors are checkpointed, so this holds after a resume too).

With ``observe = "aggregate"`` the server is one running secure aggregation: of each
intercepted round it keeps only the weighted mean of all replies
(``intercepted/round{R}_aggregate.pt``, partition -1), which the attackers get as one
batch of every client's images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from logging import ERROR, INFO

import numpy as np
import torch
from flwr.supercore import log

from fedtrust.config import RunConfig
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import AGGREGATE, RunFolder
from strategies.replies import ClientReply

InterceptFn = Callable[[InterceptedUpdate], None]


class Interceptor:
    """Saves the chosen clients' updates and runs the attackers on them."""

    def __init__(self, cfg: RunConfig, folder: RunFolder, attackers: Sequence[InterceptFn] = ()) -> None:
        self.cfg = cfg
        self.folder = folder
        self.attackers = list(attackers)
        self.rounds = cfg.intercepted_rounds()
        self.spec = cfg.compressor_spec()
        #: What the attackers raised (training goes on; the run fails at the end).
        self.errors: list[str] = []

    def train_config(self, reply: ClientReply) -> dict[str, object]:
        """The training configuration the server gave this client (what an attacker may use)."""
        cfg = self.cfg
        return {"local-mode": cfg.local_mode,
                "batch-size": int(reply.weight) if cfg.local_mode == "fedsgd" else cfg.batch_size,
                "lr": cfg.lr, "local-epochs": cfg.local_epochs, "num-examples": int(reply.weight),
                "model": cfg.model, "dataset": cfg.dataset}

    def __call__(self, server_round: int, replies: list[ClientReply], state: dict[str, torch.Tensor]) -> None:
        """Intercept the chosen replies of ``server_round`` (global weights ``state``)."""
        if server_round not in self.rounds:
            return
        if self.cfg.observe == "aggregate":
            if replies:
                self._keep(self.aggregate(server_round, replies, state))
            return
        for reply in replies:
            if not self.cfg.intercepts_client(reply.partition_id):
                continue
            item = InterceptedUpdate(
                round=server_round, node_id=int(reply.node_id), partition_id=reply.partition_id,
                payload=reply.payload, decoded=reply.decoded, global_state=state,
                train_config=self.train_config(reply), compressor=self.spec.to_dict(),
                public_state=reply.public_state, batch_indices=reply.batch_indices)
            self._keep(item)

    def aggregate(self, server_round: int, replies: list[ClientReply], state: dict[str, torch.Tensor]
                  ) -> InterceptedUpdate:
        """What secure aggregation leaves the server of a round: the weighted mean of the
        arrays every client sent and of their decoded updates (equal for a summable codec),
        the round's shared public state, and (for scoring only) every client's batch."""
        weights = np.array([float(r.weight) for r in replies])
        weights = weights / weights.sum()

        def mean(parts: list[dict]) -> dict:
            return {k: sum(w * (p[k].double() if isinstance(p[k], torch.Tensor) else p[k].astype(np.float64))
                           for w, p in zip(weights, parts)) for k in parts[0]}

        payload = {k: v.astype(np.float32) for k, v in mean([r.payload for r in replies]).items()}
        decoded = {k: v.float() for k, v in mean([r.decoded for r in replies]).items()}
        batches = [r.batch_indices for r in replies if r.batch_indices is not None]
        total = int(sum(r.weight for r in replies))
        config = {**self.train_config(replies[0]), "num-examples": total,
                  "batch-size": total if self.cfg.local_mode == "fedsgd" else self.cfg.batch_size,
                  "clients": sorted(r.partition_id for r in replies)}
        return InterceptedUpdate(
            round=server_round, node_id=AGGREGATE, partition_id=AGGREGATE, payload=payload, decoded=decoded,
            global_state=state, train_config=config, compressor=self.spec.to_dict(),
            public_state=replies[0].public_state,
            batch_indices=np.concatenate(batches) if len(batches) == len(replies) else None)

    def _keep(self, item: InterceptedUpdate) -> None:
        """Save ``item`` and hand it to the attackers."""
        path = item.save(self.folder.intercepted_file(item.round, item.partition_id),
                         global_state_file=self.folder.global_state_file(item.round))
        who = "the aggregate" if item.partition_id == AGGREGATE else f"client {item.partition_id}"
        log(INFO, "round %d: intercepted %s -> %s", item.round, who, path)
        self._attack(item)

    def _attack(self, item: InterceptedUpdate) -> None:
        for attacker in self.attackers:
            try:
                attacker(item)
            except Exception as err:  # noqa: BLE001 - an attack must not stop the training
                what = (f"round {item.round} client {item.partition_id}: "
                        f"{getattr(attacker, '__name__', type(attacker).__name__)} failed: "
                        f"{type(err).__name__}: {err}")
                self.errors.append(what)
                log(ERROR, "attack error (training goes on; the run will end as failed): %s", what)

"""Interception: what an honest-but-curious server keeps of the chosen updates, and its attackers.

For each round in ``intercept-rounds`` (and the attack round) and each chosen client,
:class:`Interceptor` builds the :class:`fedtrust.interception.InterceptedUpdate` the
server sees (payload of every exchange, decoded update, global weights, training
config, compressor spec and public state; batch indices for scoring only), saves it as
``intercepted/round{R}_client{P}.pt`` (the round's global weights once, in
``intercepted/global_round{R}.pt``) and hands it to the attackers. An attacker that
fails does not stop the training: its error is logged and kept, and the run ends as
failed (the errors are checkpointed, so this holds after a resume too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from logging import ERROR, INFO

import torch
from flwr.supercore import log

from fedtrust.config import RunConfig
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import RunFolder
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
        for reply in replies:
            if not self.cfg.intercepts_client(reply.partition_id):
                continue
            item = InterceptedUpdate(
                round=server_round, node_id=int(reply.node_id), partition_id=reply.partition_id,
                payload=reply.payload, decoded=reply.decoded, global_state=state,
                train_config=self.train_config(reply), compressor=self.spec.to_dict(),
                public_state=reply.public_state, batch_indices=reply.batch_indices)
            path = item.save(self.folder.intercepted_file(server_round, reply.partition_id),
                             global_state_file=self.folder.global_state_file(server_round))
            log(INFO, "round %d: intercepted client %d -> %s", server_round, reply.partition_id, path)
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

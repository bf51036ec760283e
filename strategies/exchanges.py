"""The exchanges of one training round, as the run's codec asks for them.

Exchange 0 is Flower's ``train`` message (the global model, the codec's broadcast);
a codec with more exchanges (PowerSGD all-reduce: P, then Q) gets one more
``train.exchange`` message per exchange, carrying the server's answer
(:meth:`fedtrust.compression.codec.ServerProtocol.respond`) computed from the accepted
replies so far. After the last exchange each reply is decoded by the codec's server
protocol, which also says what public state the server knows with it.

Message layout (record names in :mod:`fedtrust.protocol`):

* ``train``: ``arrays`` (global state), ``config`` (``server-round``, the strategy's
  ``train_config``), ``broadcast`` (the codec's, when not empty);
* reply: ``payload``, ``buffers``, ``metrics``, ``audit`` (batch indices, scoring only);
* ``train.exchange``: ``config`` (``server-round``, ``exchange``), ``server-arrays``;
  reply: ``payload``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedtrust import protocol
from fedtrust.compression import NonFiniteAggregate, ServerProtocol
from fedtrust.robust import NormBound
from strategies.flower_adapter import messages_to, to_record
from strategies.replies import ClientReply, RejectedReply, ReplyChecker, check_finite, refusing


@dataclass
class Tally:
    """Replies refused and nodes failed (an error reply, or none in time) in one round."""

    rejected: int = 0
    failed: int = 0


def collect(replies: Iterable[Message], stage: str, asked: int, tally: Tally) -> list[Message]:
    """Replies without error; error replies and missing ones count as failed nodes."""
    ok, errors = [], 0
    for msg in replies:
        if msg.has_error():
            errors += 1
            log(WARNING, "%s: node %d failed: %s", stage, msg.metadata.src_node_id, msg.error.reason)
        else:
            ok.append(msg)
    missing = max(asked - len(ok) - errors, 0)
    if missing:
        log(WARNING, "%s: %d node(s) did not reply within the round timeout", stage, missing)
    tally.failed += errors + missing
    return ok


def in_partition_order(replies: list[ClientReply]) -> list[ClientReply]:
    """Replies sorted by ``(partition id, node id)``, not by arrival.

    Every mean the server takes (the aggregate, PowerSGD's P-hat and Q-bar) sums in this
    order, so a run's float32 results do not depend on which client answered first.
    """
    return sorted(replies, key=lambda r: (r.partition_id, r.node_id))


class ExchangeRunner:
    """Runs a round's exchanges for the codec and decodes the replies.

    Parameters
    ----------
    checker:
        Checks every reply (:class:`strategies.replies.ReplyChecker`).
    server:
        The codec's server protocol (stateful over the run).
    bound:
        The norm bound (a codec may scale a contribution to its answer down to it).
    """

    def __init__(self, checker: ReplyChecker, server: ServerProtocol, bound: NormBound) -> None:
        self.checker = checker
        self.server = server
        self.bound = bound

    def train_record(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The ``train`` message's content for round ``server_round``."""
        config["server-round"] = server_round
        record = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        broadcast = self.server.broadcast(server_round)
        if broadcast:
            record[protocol.BROADCAST] = to_record(broadcast)
        return record

    def first(self, server_round: int, replies: Iterable[Message], tally: Tally) -> list[ClientReply]:
        """Parse the ``train`` replies and check each sender (the partition count settled first)."""
        parsed: list[ClientReply] = []
        for msg in replies:
            try:
                parsed.append(self.checker.parse_reply(msg.metadata.src_node_id, msg.content))
            except RejectedReply as err:
                self._refuse(tally, server_round, msg.metadata.src_node_id, err)
        parsed = in_partition_order(parsed)
        self.checker.settle_num_partitions(parsed)
        claims: dict[int, list[int]] = {}
        for reply in parsed:
            claims.setdefault(reply.partition_id, []).append(reply.node_id)
        accepted = []
        for reply in parsed:
            try:
                self.checker.check_sender(reply, server_round, claims)
                if self.server.codec.exchanges == 1:
                    self.decode(reply)
            except RejectedReply as err:
                self._refuse(tally, server_round, reply.node_id, err)
                continue
            accepted.append(reply)
        return accepted

    def later(self, grid: Grid, server_round: int, accepted: list[ClientReply], timeout: float,
              tally: Tally) -> list[ClientReply]:
        """Exchanges 1.. of a codec with more than one, then decode every reply that answered them all."""
        if self.server.codec.exchanges == 1:
            return accepted  # decoded in :meth:`first`
        for exchange in range(1, self.server.codec.exchanges):
            if not accepted:
                return []
            accepted = self._exchange(grid, server_round, exchange, accepted, timeout, tally)
        done = []
        for reply in accepted:
            try:
                self.decode(reply)
            except RejectedReply as err:
                self._refuse(tally, server_round, reply.node_id, err)
                continue
            done.append(reply)
        return done

    def decode(self, reply: ClientReply) -> None:
        """Decode a reply's arrays of every exchange in place (refused when not finite)."""
        with refusing():
            reply.decoded, reply.public_state = self.server.decode(reply.node_id, reply.payload)
        check_finite(reply.decoded)

    def _exchange(self, grid: Grid, server_round: int, exchange: int, accepted: list[ClientReply],
                  timeout: float, tally: Tally) -> list[ClientReply]:
        try:
            answer, verdicts = self.server.respond(exchange, [r.payload for r in accepted],
                                                   [r.weight for r in accepted], self.bound)
        except NonFiniteAggregate as err:
            log(WARNING, "round %d: %s: %d replies rejected", server_round, err, len(accepted))
            tally.rejected += len(accepted)
            return []
        for reply, verdict in zip(accepted, verdicts):
            if verdict.clipped:
                log(WARNING, "round %d: node %d: its contribution to exchange %d %s: scaled down to the bound",
                    server_round, reply.node_id, exchange, verdict.reason("norm", self.bound.ratio))
        record = RecordDict({protocol.SERVER_ARRAYS: to_record(answer),
                             protocol.CONFIG: ConfigRecord({"server-round": server_round, "exchange": exchange})})
        by_node = {r.node_id: r for r in accepted}
        stage = f"exchange {exchange}"
        messages = messages_to(record, by_node, f"{MessageType.TRAIN}.{protocol.EXCHANGE_ACTION}")
        replies = collect(grid.send_and_receive(messages, timeout=timeout), stage, len(messages), tally)
        done = []
        for msg in replies:
            reply = by_node.get(msg.metadata.src_node_id)
            try:
                if reply is None:
                    raise RejectedReply("reply from a node that was not asked")
                arrays = self.checker.parse_exchange(exchange, msg.content)
            except RejectedReply as err:
                self._refuse(tally, server_round, msg.metadata.src_node_id, err, stage)
                continue
            reply.payload = {**reply.payload, **arrays}
            reply.metrics["uplink-bytes"] += float(sum(a.nbytes for a in arrays.values()))
            done.append(reply)
        return in_partition_order(done)

    @staticmethod
    def _refuse(tally: Tally, server_round: int, node_id: int, err: RejectedReply, stage: str = "") -> None:
        tally.rejected += 1
        log(WARNING, "round %d: rejected %sreply of node %d: %s", server_round, f"{stage} " if stage else "",
            node_id, err)


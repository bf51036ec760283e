"""CompressedFedAvg: decode compressed client updates, aggregate them and intercept some.

A Flower Message-API strategy built on :class:`flwr.serverapp.strategy.FedAvg`
(node sampling, message construction). Each round it

1. sends the global model (and PowerSGD's shared warm-start Q) to the sampled nodes,
2. decodes every reply with the run's compressor (PowerSGD ``allreduce`` takes a
   second exchange: the server averages and orthogonalises the clients' P and
   sends P-hat back for their Q),
3. rejects replies that cannot be decoded or are not finite, that claim a partition,
   a partition count or an example count the run does not have, or that repeat a
   partition already heard from this round (logged and counted),
4. hands the updates of the chosen rounds and clients, as an honest-but-curious
   server sees them, to the ``on_intercept`` callbacks and saves them,
5. bounds what one client can do (:mod:`fedtrust.robust`): an update, or a change of
   BatchNorm statistics, whose norm is above ``max-norm-ratio`` times the round's
   median is refused or clipped,
6. steps the global model with the weighted mean of the decoded updates, averages
   the BatchNorm statistics, evaluates on the held-out test split and appends a
   row to ``rounds.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from fedtrust import protocol
from fedtrust.compression import Payload, get_compressor
from fedtrust.compression import powersgd as psgd
from fedtrust.compression.base import Layout
from fedtrust.compression.validate import PayloadError, validate_dense, validate_indices, validate_payload
from fedtrust.config import RunConfig
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import RunFolder
from fedtrust.robust import NormBound, Verdict, l2_norm
from fedtrust.training import apply_update, weighted_mean

EvaluateFn = Callable[[int, dict[str, torch.Tensor]], tuple[float, float]]
InterceptFn = Callable[[InterceptedUpdate], None]


def _to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _q_used(q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Q a PowerSGD client multiplies with: its warm-start Q, orthogonalised (as PyTorch's hook)."""
    return {f"Q/{k}": psgd.orthogonalize(torch.from_numpy(np.array(v, dtype=np.float32))).numpy()
            for k, v in q.items()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _metric_int(metrics: dict, key: str, default: int | None = None) -> int:
    """A non-negative integer metric of a reply, or :class:`RejectedReply`."""
    value = metrics.get(key, default)
    if value is None:
        raise RejectedReply(f"metric {key!r} is missing")
    if not _is_number(value) or value < 0 or float(value) != int(value):
        raise RejectedReply(f"{key}={value!r} is not a non-negative integer")
    return int(value)


def _check_finite(update: dict[str, torch.Tensor]) -> None:
    """Finite arrays can still decode (or average) to Inf: refuse that before it reaches the model."""
    for name, tensor in update.items():
        if not bool(torch.isfinite(tensor).all()):
            raise RejectedReply(f"not finite: {name}")


def _all_finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(np.isfinite(v).all() for v in arrays.values())


@contextmanager
def _refusing() -> Iterator[None]:
    """Turn whatever a malformed reply makes the server's code raise into a :class:`RejectedReply`."""
    try:
        yield
    except RejectedReply:
        raise
    except PayloadError as err:
        raise RejectedReply(str(err)) from err
    except Exception as err:  # arrays that do not deserialise, records of the wrong kind, ...
        raise RejectedReply(f"unreadable reply: {type(err).__name__}: {err}") from err


@dataclass
class ClientReply:
    """One accepted client reply of a round."""

    node_id: int
    partition_id: int
    weight: float
    payload: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    metrics: dict[str, float]
    batch_indices: np.ndarray | None
    decoded: dict[str, torch.Tensor] = field(default_factory=dict)
    public_state: dict[str, np.ndarray] = field(default_factory=dict)
    #: The partition count the client reported (0: not reported).
    num_partitions: int = 0
    #: The factor the norm bound scaled this update by (1: untouched).
    scale: float = 1.0


@dataclass
class RoundOutcome:
    """What one training round produced."""

    accepted: list[ClientReply]
    rejected: int
    failed: int
    clipped: int = 0


class RejectedReply(ValueError):
    """A client reply the server refuses (the reason is logged; the round goes on)."""


class CompressedFedAvg(FedAvg):
    """FedAvg/FedSGD over compressed updates, with an honest-but-curious interception hook.

    Parameters
    ----------
    cfg:
        The validated run configuration.
    layout:
        Names and shapes of the model's trainable parameters (the update layout).
    run_folder:
        Where ``rounds.csv`` and intercepted updates go.
    evaluate_fn:
        ``(round, state_dict) -> (test_loss, test_accuracy)`` on the held-out split.
    on_intercept:
        Callbacks that receive each intercepted update (the attackers).
    resume_from:
        A ``checkpoint.pt`` of this run folder to continue from (``resume = true``).
    num_train:
        Size of the train split, when known: bounds the batch indices, the
        ``num-examples`` and the ``num-partitions`` a client may claim.
    partition_size:
        ``(num_partitions, partition_id) -> size`` of a client's partition of the train
        split, when the server can compute it: a reply's ``num-examples`` must then be
        exactly what that partition gives (FedAvg: its size; FedSGD: the batch drawn from it).
    """

    def __init__(self, cfg: RunConfig, layout: Layout, run_folder: RunFolder,
                 evaluate_fn: EvaluateFn | None = None,
                 on_intercept: Sequence[InterceptFn] = (), resume_from=None,
                 num_train: int | None = None,
                 partition_size: Callable[[int, int], int] | None = None) -> None:
        super().__init__(fraction_train=cfg.fraction_train, fraction_evaluate=0.0,
                         min_train_nodes=cfg.min_clients, min_available_nodes=cfg.min_clients)
        self.cfg = cfg
        self.layout = layout
        self.run_folder = run_folder
        self.evaluate_fn = evaluate_fn
        self.on_intercept = list(on_intercept)
        self.resume_from = resume_from
        self.num_train = num_train
        self.partition_size = partition_size
        self.bound = NormBound(cfg.max_norm_ratio, cfg.max_norm_action)
        self.decoder = get_compressor(cfg.compressor, level=cfg.level, layout=layout,
                                      **cfg.compressor_options())
        self.allreduce = cfg.compressor == "powersgd" and cfg.powersgd_mode == "allreduce"
        # PowerSGD public state: the shared warm-start Q (allreduce) or each client's last Q (local).
        self.q_shared: dict[str, np.ndarray] | None = None
        self.q_last: dict[int, dict[str, np.ndarray]] = {}
        if cfg.compressor == "powersgd":
            q0 = psgd.initial_q(layout, cfg.level, cfg.seed)
            self.q_shared = {k: v.numpy() for k, v in q0.items()}
        self.intercept_rounds = cfg.intercepted_rounds()
        self.spec = cfg.compressor_spec()
        #: Train-split indices the accepted FedSGD replies trained on, and the partitions that took part.
        self.trained_indices: list[np.ndarray] = []
        self.partitions_seen: set[int] = set()
        #: The number of partitions the clients split the train set into: ``num-partitions`` of
        #: the run config, else the count most replies of the first round reported (0: not yet known).
        self.num_partitions = cfg.num_partitions
        #: Exceptions raised by ``on_intercept`` callbacks (training goes on; the run fails at the end).
        self.attack_errors: list[str] = []
        self.buffer_shapes: dict[str, tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ hooks
    def summary(self) -> None:
        """Log the strategy's configuration."""
        super().summary()
        log(INFO, "\t└──> Compression: %s level=%d %s", self.cfg.compressor, self.cfg.level,
            self.cfg.compressor_options())

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample nodes; send the global model and, for PowerSGD allreduce, the shared Q."""
        num_nodes = int(len(list(grid.get_node_ids())) * self.fraction_train)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, max(num_nodes, self.min_train_nodes))
        config["server-round"] = server_round
        record = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        if self.allreduce and server_round > 1 and self.q_shared is not None:
            record[protocol.WARM_START] = _to_record(self.q_shared)
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def parse_reply(self, node_id: int, content: RecordDict) -> ClientReply:
        """Check one reply's records and turn them into a :class:`ClientReply`.

        Raises :class:`RejectedReply` with the reason when anything does not match what
        the run's configuration allows; whatever a malformed reply makes the parsing
        raise becomes a :class:`RejectedReply` too, so no reply can stop the server.
        """
        with _refusing():
            return self._parse_reply(node_id, content)

    def _parse_reply(self, node_id: int, content: RecordDict) -> ClientReply:
        for key in (protocol.PAYLOAD, protocol.METRICS):
            if key not in content:
                raise RejectedReply(f"record {key!r} is missing")
        metrics = dict(content[protocol.METRICS])
        weight = metrics.get("num-examples", 0)
        if not _is_number(weight) or weight < 1 or float(weight) != int(weight):
            raise RejectedReply(f"num-examples={weight!r} is not a positive integer")
        weight = int(weight)
        max_batch = max(self.cfg.batch_size, self.cfg.attack_images if self.cfg.attack != "none" else 0)
        if self.cfg.local_mode == "fedsgd" and weight > max_batch:
            raise RejectedReply(f"num-examples={weight} exceeds the FedSGD batch-size {max_batch}")
        if self.num_train is not None and weight > self.num_train:
            raise RejectedReply(f"num-examples={weight} exceeds the {self.num_train} train samples")
        partition_id = _metric_int(metrics, "partition-id")
        num_partitions = _metric_int(metrics, "num-partitions", default=0)
        if num_partitions and partition_id >= num_partitions:
            raise RejectedReply(f"partition-id={partition_id} is not below num-partitions={num_partitions}")
        if self.num_train is not None and num_partitions > self.num_train:
            raise RejectedReply(f"num-partitions={num_partitions} is more than the {self.num_train} train samples")
        if self.cfg.num_partitions and num_partitions != self.cfg.num_partitions:
            raise RejectedReply(f"num-partitions={num_partitions} is not the run's num-partitions="
                                f"{self.cfg.num_partitions}")
        train_loss = metrics.get("train-loss", float("nan"))
        if not _is_number(train_loss):
            raise RejectedReply(f"train-loss={train_loss!r} is not a number")
        payload = _from_record(content[protocol.PAYLOAD])
        validate_payload(payload, self.spec, self.layout, phase="p" if self.allreduce else "all")
        buffers = _from_record(content[protocol.BUFFERS]) if protocol.BUFFERS in content else {}
        if self.buffer_shapes is not None:
            validate_dense(buffers, self.buffer_shapes)
        batch_indices = None
        if protocol.AUDIT in content:
            batch_indices = _from_record(content[protocol.AUDIT]).get("batch-indices")
            self._check_batch_indices(batch_indices, weight)
        # Bytes as the server measured them, not as the client claims them.
        metrics.update({"num-examples": float(weight), "train-loss": float(train_loss),
                        "partition-id": partition_id, "num-partitions": num_partitions,
                        "uplink-bytes": float(sum(a.nbytes for a in payload.values())),
                        "dense-bytes": float(self.decoder.dense_nbytes()),
                        "buffer-bytes": float(sum(a.nbytes for a in buffers.values()))})
        return ClientReply(node_id=node_id, partition_id=partition_id, weight=float(weight),
                           payload=payload, buffers=buffers, metrics=metrics, batch_indices=batch_indices,
                           num_partitions=num_partitions)

    def settle_num_partitions(self, replies: Sequence[ClientReply]) -> None:
        """Fix the run's partition count, if not known yet, to the one most replies report.

        Honest clients all report the same count (their node config's, or the run's), so
        the first round's majority is it; a reply that disagrees is refused from then on
        (:meth:`check_sender`). Ties go to the smaller count.
        """
        if self.num_partitions:
            return
        counts = [r.num_partitions for r in replies if r.num_partitions > 0]
        if counts:
            values, freq = np.unique(counts, return_counts=True)
            self.num_partitions = int(values[int(np.argmax(freq))])
            log(INFO, "the clients split the train set into %d partitions", self.num_partitions)

    def expected_examples(self, server_round: int, partition_id: int) -> int | None:
        """The ``num-examples`` an honest client of ``partition_id`` sends, when the server can know it."""
        if self.partition_size is None or not self.num_partitions:
            return None
        size = self.partition_size(self.num_partitions, partition_id)
        if self.cfg.local_mode == "fedavg":
            return size
        batch = self.cfg.batch_size
        if server_round == self.cfg.attack_round and self.cfg.attacks_client(partition_id):
            batch = self.cfg.attack_images
        return min(batch, size)

    def check_sender(self, reply: ClientReply, server_round: int, claims: Mapping[int, Sequence[int]]) -> None:
        """Checks of a reply against the run and the round: its partition count, whether another
        node claimed its partition this round, and its ``num-examples`` against the partition.

        ``claims`` maps each partition id to the nodes whose replies claim it this round. When
        two nodes claim one partition (two SuperNodes started with the same node config, or a
        node that lies) the server cannot tell which is genuine: every claim is refused.
        """
        if reply.num_partitions != self.num_partitions:
            raise RejectedReply(f"num-partitions={reply.num_partitions} is not the run's {self.num_partitions}")
        nodes = list(claims.get(reply.partition_id, [reply.node_id]))
        if len(nodes) > 1:
            raise RejectedReply(f"partition-id={reply.partition_id} is claimed by nodes {sorted(nodes)} this "
                                "round: a repeated partition is refused for every node that claims it")
        with _refusing():
            expected = self.expected_examples(server_round, reply.partition_id)
        if expected is not None and int(reply.weight) != expected:
            raise RejectedReply(f"num-examples={int(reply.weight)} is not the {expected} that partition "
                                f"{reply.partition_id} of {self.num_partitions} gives")

    def _check_batch_indices(self, indices: object, weight: float) -> None:
        """The FedSGD batch's train-split indices: distinct int64 values, one per example."""
        if indices is None:
            return
        if not isinstance(indices, np.ndarray) or indices.dtype != np.int64 or indices.ndim != 1:
            raise RejectedReply("batch-indices must be a 1-D int64 array")
        if len(indices) != int(weight):
            raise RejectedReply(f"{len(indices)} batch-indices for num-examples={weight}")
        validate_indices(indices, self.num_train if self.num_train is not None else np.iinfo(np.int64).max,
                         "batch-indices")

    def decode(self, reply: ClientReply) -> None:
        """Decode a one-exchange reply (none, Top-K, PowerSGD local) in place."""
        with _refusing():
            reply.decoded = self.decoder.decode(Payload(reply.payload))
        _check_finite(reply.decoded)
        if self.cfg.compressor == "powersgd":  # local mode: the client's own Q and P
            q_used = self.q_last.get(reply.node_id, self.q_shared or {})
            reply.public_state = {**_q_used(q_used),
                                  **{f"P_hat/{k[2:]}": v for k, v in reply.payload.items()
                                     if k.startswith("p/")}}
            self.q_last[reply.node_id] = {k[2:]: v for k, v in reply.payload.items() if k.startswith("q/")}

    # ------------------------------------------------------------------ round
    def _collect(self, replies: Iterable[Message], stage: str, asked: int) -> tuple[list[Message], int]:
        """Replies without error, and how many nodes failed (an error reply, or none in time)."""
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
        return ok, errors + missing

    def train_round(self, grid: Grid, server_round: int, state: dict[str, torch.Tensor],
                    timeout: float) -> RoundOutcome:
        """Run one round's exchanges and return the decoded replies that pass every check.

        Their norms are not bounded yet (:meth:`bound_norms`): what the server received is
        intercepted first, as an honest-but-curious server would.
        """
        messages = list(self.configure_train(server_round, ArrayRecord(state), ConfigRecord(), grid))
        replies, failed = self._collect(grid.send_and_receive(messages, timeout=timeout), "train", len(messages))
        rejected = 0

        def refuse(node_id: int, err: RejectedReply) -> None:
            nonlocal rejected
            rejected += 1
            log(WARNING, "round %d: rejected reply of node %d: %s", server_round, node_id, err)

        parsed: list[ClientReply] = []
        for msg in replies:
            try:
                parsed.append(self.parse_reply(msg.metadata.src_node_id, msg.content))
            except RejectedReply as err:
                refuse(msg.metadata.src_node_id, err)
        self.settle_num_partitions(parsed)
        claims: dict[int, list[int]] = {}
        for reply in parsed:
            claims.setdefault(reply.partition_id, []).append(reply.node_id)
        accepted: list[ClientReply] = []
        for reply in parsed:
            try:
                self.check_sender(reply, server_round, claims)
                if not self.allreduce:
                    self.decode(reply)
            except RejectedReply as err:
                refuse(reply.node_id, err)
                continue
            accepted.append(reply)
        if self.allreduce and accepted:
            accepted, more_rejected, more_failed = self._powersgd_second_exchange(
                grid, server_round, accepted, timeout)
            rejected += more_rejected
            failed += more_failed
        return RoundOutcome(accepted=accepted, rejected=rejected, failed=failed)

    def _powersgd_second_exchange(self, grid: Grid, server_round: int, accepted: list[ClientReply],
                                  timeout: float) -> tuple[list[ClientReply], int, int]:
        """PowerSGD allreduce: average and orthogonalise P, send P-hat, receive and decode Q_i."""
        # One client's P must not steer P-hat (every client's next Q is M_i^T P-hat): a P above the
        # norm bound is scaled down to it for the average, whatever max-norm-action says.
        verdicts = self.bound.judge([l2_norm(v for k, v in r.payload.items() if k.startswith("p/"))
                                     for r in accepted], action="clip")
        for reply, verdict in zip(accepted, verdicts):
            if verdict.clipped:
                log(WARNING, "round %d: node %d: P %s: scaled down to the bound for P-hat", server_round,
                    reply.node_id, verdict.reason("P", self.bound.ratio))
        p_hat = psgd.aggregate_p(
            [Payload({k: (v * np.float32(verdict.scale) if k.startswith("p/") and verdict.scale != 1.0 else v)
                      for k, v in r.payload.items()}) for r, verdict in zip(accepted, verdicts)],
            [r.weight for r in accepted])
        if not _all_finite(p_hat):
            # finite P's whose weighted mean overflows: no decodable update this round
            log(WARNING, "round %d: the clients' P do not average to a finite P-hat: %d replies rejected",
                server_round, len(accepted))
            return [], len(accepted), 0
        record = RecordDict({protocol.P_HAT: _to_record(p_hat),
                             protocol.CONFIG: ConfigRecord({"server-round": server_round})})
        by_node = {r.node_id: r for r in accepted}
        messages = [Message(content=record, message_type=f"{MessageType.TRAIN}.{protocol.POWERSGD_Q_ACTION}",
                            dst_node_id=node_id) for node_id in by_node]
        replies, failed = self._collect(grid.send_and_receive(messages, timeout=timeout), "powersgd_q",
                                        len(messages))
        done: list[ClientReply] = []
        rejected = 0
        q_used = _q_used(self.q_shared or {})
        for msg in replies:
            reply = by_node.get(msg.metadata.src_node_id)
            try:
                if reply is None:
                    raise RejectedReply("reply from a node that was not asked")
                if protocol.PAYLOAD not in msg.content:
                    raise RejectedReply("record 'payload' is missing")
                with _refusing():
                    q_payload = _from_record(msg.content[protocol.PAYLOAD])
                    validate_payload(q_payload, self.spec, self.layout, phase="q")
                    reply.decoded = psgd.decode_allreduce(p_hat, Payload(reply.payload),
                                                          Payload(q_payload), self.layout)
                _check_finite(reply.decoded)
                reply.payload = {**reply.payload, **q_payload}
                reply.metrics["uplink-bytes"] += float(sum(a.nbytes for a in q_payload.values()))
                reply.public_state = {**q_used,
                                      **{f"P_hat/{k}": v for k, v in p_hat.items()}}
                done.append(reply)
            except RejectedReply as err:
                rejected += 1
                log(WARNING, "round %d: rejected powersgd_q reply of node %d: %s", server_round,
                    msg.metadata.src_node_id, err)
        return done, rejected, failed

    def update_warm_start(self, done: list[ClientReply]) -> bool:
        """Set the next round's shared Q to the weighted mean of the clients' Q, if it is finite.

        A clipped update's Q counts scaled like its update (the decoded update is linear in Q_i).
        """
        q_bar = psgd.aggregate_q(
            [Payload({k: (v * np.float32(r.scale) if k.startswith("q/") and r.scale != 1.0 else v)
                      for k, v in r.payload.items()}) for r in done],
            [r.weight for r in done])
        if not _all_finite(q_bar):
            return False  # one hostile Q must not poison every later round's warm start
        self.q_shared = q_bar
        return True

    # ------------------------------------------------------------------ interception
    def intercept(self, server_round: int, replies: list[ClientReply],
                  global_state: dict[str, torch.Tensor]) -> None:
        """Hand the chosen clients' updates to the attackers and save them."""
        if server_round not in self.intercept_rounds:
            return
        for reply in replies:
            if not self.cfg.intercepts_client(reply.partition_id):
                continue
            item = InterceptedUpdate(
                round=server_round, node_id=int(reply.node_id), partition_id=reply.partition_id,
                payload=reply.payload, decoded=reply.decoded, global_state=global_state,
                train_config={"local-mode": self.cfg.local_mode,
                              "batch-size": int(reply.weight) if self.cfg.local_mode == "fedsgd" else self.cfg.batch_size,
                              "lr": self.cfg.lr, "local-epochs": self.cfg.local_epochs,
                              "num-examples": int(reply.weight), "model": self.cfg.model,
                              "dataset": self.cfg.dataset},
                compressor=self.cfg.compressor_spec(), public_state=reply.public_state,
                batch_indices=reply.batch_indices)
            path = item.save(self.run_folder.intercepted_file(server_round, reply.partition_id))
            log(INFO, "round %d: intercepted client %d -> %s", server_round, reply.partition_id, path)
            for callback in self.on_intercept:
                try:
                    callback(item)
                except Exception as err:  # noqa: BLE001 - an attack must not stop the training
                    what = (f"round {server_round} client {reply.partition_id}: "
                            f"{getattr(callback, '__name__', type(callback).__name__)} failed: "
                            f"{type(err).__name__}: {err}")
                    self.attack_errors.append(what)
                    log(ERROR, "attack error (training goes on; the run will end as failed): %s", what)

    # ------------------------------------------------------------------ norm bounds
    def bound_norms(self, server_round: int, replies: list[ClientReply],
                    global_state: dict[str, torch.Tensor]) -> tuple[list[ClientReply], int, int]:
        """Refuse or clip updates, and BatchNorm statistics, far above the round's median norm.

        The update's norm is that of the decoded update; the statistics' norm is that of
        their change from the global model's. Returns ``(kept, refused, clipped)``.
        """
        if not self.bound.active or not replies:
            return replies, 0, 0
        update_verdicts = self.bound.judge([l2_norm(r.decoded.values()) for r in replies])
        with_buffers = [r for r in replies if r.buffers]
        buffer_verdicts: dict[int, Verdict] = {}
        if with_buffers:
            changes = [{k: np.asarray(v, np.float64) - global_state[k].detach().cpu().double().numpy()
                        for k, v in r.buffers.items() if k in global_state} for r in with_buffers]
            verdicts = self.bound.judge([l2_norm(c.values()) for c in changes])
            for reply, change, verdict in zip(with_buffers, changes, verdicts):
                buffer_verdicts[id(reply)] = verdict
                if verdict.clipped:
                    reply.buffers = {k: (global_state[k].detach().cpu().double().numpy()
                                         + verdict.scale * change[k]).astype(np.asarray(v).dtype)
                                     if k in change else v for k, v in reply.buffers.items()}
        kept: list[ClientReply] = []
        refused = clipped = 0
        ratio = self.bound.ratio
        for reply, verdict in zip(replies, update_verdicts):
            buffers = buffer_verdicts.get(id(reply))
            if verdict.refused or (buffers is not None and buffers.refused):
                refused += 1
                why = verdict.reason("update", ratio) if verdict.refused else buffers.reason(
                    "BatchNorm statistics' change", ratio)
                log(WARNING, "round %d: refused node %d (partition %d): %s", server_round, reply.node_id,
                    reply.partition_id, why)
                continue
            if verdict.clipped:
                reply.decoded = {k: v * verdict.scale for k, v in reply.decoded.items()}
                reply.scale = verdict.scale
            if verdict.clipped or (buffers is not None and buffers.clipped):
                clipped += 1
                why = verdict.reason("update", ratio) if verdict.clipped else buffers.reason(
                    "BatchNorm statistics' change", ratio)
                log(WARNING, "round %d: clipped node %d (partition %d) to the bound: %s", server_round,
                    reply.node_id, reply.partition_id, why)
            kept.append(reply)
        return kept, refused, clipped

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, global_state: dict[str, torch.Tensor],
                  replies: list[ClientReply]) -> dict[str, torch.Tensor]:
        """Step the global model with the weighted mean update and average BatchNorm statistics."""
        weights = [r.weight for r in replies]
        mean_update = weighted_mean([r.decoded for r in replies], weights)
        step = self.cfg.server_lr * (self.cfg.lr if self.cfg.local_mode == "fedsgd" else 1.0)
        new_state = apply_update(global_state, mean_update, step)
        _check_finite(new_state)  # finite updates can still step the model out of float32's range
        with_buffers = [r for r in replies if r.buffers]
        if with_buffers:
            means = weighted_mean([{k: torch.from_numpy(v) for k, v in r.buffers.items()} for r in with_buffers],
                                  [r.weight for r in with_buffers])
            _check_finite(means)
            for name, value in means.items():
                if name in new_state and new_state[name].shape == value.shape:
                    new_state[name] = value.to(new_state[name].dtype)
        return new_state

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """Save the global model, the strategy's state and the round (``checkpoint.pt``).

        Written to a temporary file and renamed, so a crash leaves the last good one.
        Readable with ``torch.load(weights_only=True)``: tensors, ints and dicts only.
        """
        np_to_t = lambda d: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in (d or {}).items()}
        blob = {
            "round": server_round,
            "global_state": {k: v.detach().cpu() for k, v in state.items()},
            "q_shared": np_to_t(self.q_shared),
            "q_last": {int(k): np_to_t(v) for k, v in self.q_last.items()},
            "trained_indices": [torch.from_numpy(np.asarray(i, dtype=np.int64)) for i in self.trained_indices],
            "partitions_seen": sorted(int(p) for p in self.partitions_seen),
            "num_partitions": int(self.num_partitions),
            "attack_errors": list(self.attack_errors),
        }
        path = self.run_folder.path / "checkpoint.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    def restore(self, path) -> tuple[int, dict[str, torch.Tensor]]:
        """Load a checkpoint; return the first round still to run and the global state.

        What the run folder holds of later rounds (rows of every CSV, intercepted updates,
        rows of the final model) was written after this checkpoint and is dropped, so
        that the resumed rounds write it once.
        """
        blob = load_checkpoint(path)
        self.q_shared = {k: v.numpy() for k, v in blob["q_shared"].items()} or self.q_shared
        self.q_last = {int(k): {n: t.numpy() for n, t in v.items()} for k, v in blob["q_last"].items()}
        self.trained_indices = [t.numpy() for t in blob["trained_indices"]]
        self.partitions_seen = set(blob["partitions_seen"])
        self.num_partitions = int(blob.get("num_partitions", blob.get("num_partitions_reported", 0)))
        self.attack_errors = [str(e) for e in blob.get("attack_errors", [])]
        dropped = self.run_folder.discard_after(int(blob["round"]))
        if any(dropped.values()):
            log(INFO, "resume: dropped rows written after round %d's checkpoint: %s", int(blob["round"]),
                ", ".join(f"{n} from {f}" for f, n in dropped.items() if n))
        return int(blob["round"]) + 1, blob["global_state"]

    # ------------------------------------------------------------------ loop
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Run ``num_rounds`` rounds; each finished round is written to ``rounds.csv`` at once."""
        log(INFO, "Starting %s for %d rounds", self.__class__.__name__, num_rounds)
        self.summary()
        result = Result()
        state = initial_arrays.to_torch_state_dict()
        names = {n for n, _ in self.layout}
        self.buffer_shapes = {k: tuple(v.shape) for k, v in state.items()
                              if k not in names and v.dtype.is_floating_point}
        first = 1
        if self.resume_from is not None:
            first, state = self.restore(self.resume_from)
            log(INFO, "resuming after round %d from %s", first - 1, self.resume_from)
        for server_round in range(first, num_rounds + 1):
            t0 = time.perf_counter()
            log(INFO, "")
            log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
            outcome = self.train_round(grid, server_round, state, timeout)
            self.intercept(server_round, outcome.accepted, state)
            accepted, refused, outcome.clipped = self.bound_norms(server_round, outcome.accepted, state)
            outcome.rejected += refused
            if self.allreduce and accepted and not self.update_warm_start(accepted):
                log(WARNING, "round %d: the clients' Q do not average to a finite Q: %d replies rejected, "
                    "the warm start stays as it was", server_round, len(accepted))
                outcome.rejected += len(accepted)
                accepted = []
            if len(accepted) < self.min_train_nodes:
                log(WARNING, "round %d: only %d usable replies (min-clients=%d): global model unchanged",
                    server_round, len(accepted), self.min_train_nodes)
            else:
                try:
                    state = self.aggregate(state, accepted)
                except RejectedReply as err:
                    log(WARNING, "round %d: the mean update is unusable (%s): its %d replies rejected, "
                        "global model unchanged", server_round, err, len(accepted))
                    outcome.rejected += len(accepted)
                    accepted = []
                else:
                    self.partitions_seen |= {r.partition_id for r in accepted}
                    self.trained_indices += [r.batch_indices for r in accepted if r.batch_indices is not None]
            test_loss, test_acc = (self.evaluate_fn(server_round, state) if self.evaluate_fn
                                   else (float("nan"), float("nan")))
            row = {
                "round": server_round, "test_accuracy": round(test_acc, 6), "test_loss": round(test_loss, 6),
                "train_loss": round(float(np.mean([r.metrics["train-loss"] for r in accepted]))
                                    if accepted else float("nan"), 6),
                "clients": len(accepted), "rejected": outcome.rejected, "failed": outcome.failed,
                "uplink_bytes": int(sum(r.metrics["uplink-bytes"] for r in accepted)),
                "dense_bytes": int(sum(r.metrics["dense-bytes"] for r in accepted)),
                "buffer_bytes": int(sum(r.metrics["buffer-bytes"] for r in accepted)),
                "seconds": round(time.perf_counter() - t0, 3), "clipped": outcome.clipped,
            }
            self.run_folder.append_round(row)
            log(INFO, "round %d/%d: test_accuracy=%.4f test_loss=%.4f clients=%d rejected=%d failed=%d "
                "clipped=%d uplink=%d B (dense %d B) in %.1fs", server_round, num_rounds, test_acc, test_loss,
                row["clients"], row["rejected"], row["failed"], row["clipped"], row["uplink_bytes"],
                row["dense_bytes"], row["seconds"])
            self.checkpoint(server_round, state)
            result.train_metrics_clientapp[server_round] = MetricRecord(
                {k: float(v) for k, v in row.items() if k != "round"})
        result.arrays = ArrayRecord(state)
        return result


class CheckpointError(RuntimeError):
    """A ``checkpoint.pt`` that cannot be read (truncated, corrupt, not fedtrust's)."""


def load_checkpoint(path) -> dict:
    """A run folder's checkpoint, or :class:`CheckpointError` naming the file and what to do."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "round" not in blob or "global_state" not in blob:
            raise ValueError("not a fedtrust checkpoint (no round or global_state)")
    except Exception as err:  # noqa: BLE001 - truncated zip, unpickling error, wrong content, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt. "
            "Move it away to restart the run from round 1, or start a new run") from None
    return blob

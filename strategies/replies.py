"""Reply validation: what a client's reply must hold before the server uses it.

A reply from a broken or hostile client must not crash the server or reach the model:
:class:`ReplyChecker` turns each reply into a :class:`ClientReply` or refuses it with
:class:`RejectedReply` (the reason is logged, the round goes on). It checks

* the records and metrics: ``num-examples`` (a positive integer within the FedSGD batch
  and the train split), ``partition-id``, ``num-partitions``, ``train-loss``;
* the payload against the codec (:func:`fedtrust.compression.validate.validate_payload`);
* BatchNorm statistics (dense, finite, variances >= 0) and the FedSGD batch indices;
* the sender against the run and the round (:meth:`ReplyChecker.check_sender`): the
  partition count, a partition claimed by two nodes, ``num-examples`` against the
  partition's size.

Byte counts are measured here, never taken from the client's claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.supercore import log

from fedtrust import protocol
from fedtrust.compression import Codec
from fedtrust.compression.validate import PayloadError, validate_dense, validate_indices, validate_payload
from fedtrust.config import RunConfig
from strategies.flower_adapter import from_record


class RejectedReply(ValueError):
    """A client reply the server refuses (the reason is logged; the round goes on)."""


@contextmanager
def refusing() -> Iterator[None]:
    """Turn whatever a malformed reply makes the server's code raise into a :class:`RejectedReply`."""
    try:
        yield
    except RejectedReply:
        raise
    except PayloadError as err:
        raise RejectedReply(str(err)) from err
    except Exception as err:  # arrays that do not deserialise, records of the wrong kind, ...
        raise RejectedReply(f"unreadable reply: {type(err).__name__}: {err}") from err


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """Finite arrays can still decode (or average) to Inf: refuse that before it reaches the model."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise RejectedReply(f"not finite: {name}")


@dataclass
class ClientReply:
    """One accepted client reply of a round (its arrays of every exchange so far)."""

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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _metric_int(metrics: Mapping[str, object], key: str, default: int | None = None) -> int:
    """A non-negative integer metric of a reply, or :class:`RejectedReply`."""
    value = metrics.get(key, default)
    if value is None:
        raise RejectedReply(f"metric {key!r} is missing")
    if not _is_number(value) or value < 0 or float(value) != int(value):
        raise RejectedReply(f"{key}={value!r} is not a non-negative integer")
    return int(value)


class ReplyChecker:
    """Checks replies against the run's configuration and codec.

    Parameters
    ----------
    cfg:
        The validated run configuration.
    codec:
        The run's codec (what each exchange's payload must hold).
    num_train:
        Size of the train split, when known: bounds batch indices, ``num-examples`` and
        ``num-partitions``.
    partition_size:
        ``(num_partitions, partition_id) -> size`` of a partition, when the server can
        compute it: ``num-examples`` must then be exactly what that partition gives.
    """

    def __init__(self, cfg: RunConfig, codec: Codec, num_train: int | None = None,
                 partition_size: Callable[[int, int], int] | None = None) -> None:
        self.cfg = cfg
        self.codec = codec
        self.num_train = num_train
        self.partition_size = partition_size
        #: ``num-partitions`` of the run config, else the first round's majority (0: not yet known).
        self.num_partitions = cfg.num_partitions
        #: Names and shapes of the BatchNorm statistics (known once the global model is).
        self.buffer_shapes: dict[str, tuple[int, ...]] | None = None

    def parse_reply(self, node_id: int, content: RecordDict) -> ClientReply:
        """Check one first-exchange reply and turn it into a :class:`ClientReply` (or refuse it)."""
        with refusing():
            return self._parse_reply(node_id, content)

    def _parse_reply(self, node_id: int, content: RecordDict) -> ClientReply:
        for key in (protocol.PAYLOAD, protocol.METRICS):
            if key not in content:
                raise RejectedReply(f"record {key!r} is missing")
        metrics = dict(content[protocol.METRICS])
        weight = self._num_examples(metrics)
        partition_id, num_partitions = self._partition(metrics)
        train_loss = metrics.get("train-loss", float("nan"))
        if not _is_number(train_loss):
            raise RejectedReply(f"train-loss={train_loss!r} is not a number")
        payload = from_record(content[protocol.PAYLOAD])
        validate_payload(payload, self.codec, exchange=0)
        buffers = from_record(content[protocol.BUFFERS]) if protocol.BUFFERS in content else {}
        if self.buffer_shapes is not None:
            validate_dense(buffers, self.buffer_shapes)
        batch_indices = None
        if protocol.AUDIT in content:
            batch_indices = from_record(content[protocol.AUDIT]).get("batch-indices")
            self.check_batch_indices(batch_indices, weight)
        metrics.update({"num-examples": float(weight), "train-loss": float(train_loss),
                        "partition-id": partition_id, "num-partitions": num_partitions,
                        "uplink-bytes": float(sum(a.nbytes for a in payload.values())),
                        "dense-bytes": float(self.codec.dense_nbytes()),
                        "buffer-bytes": float(sum(a.nbytes for a in buffers.values()))})
        return ClientReply(node_id=node_id, partition_id=partition_id, weight=float(weight),
                           payload=payload, buffers=buffers, metrics=metrics, batch_indices=batch_indices,
                           num_partitions=num_partitions)

    def parse_exchange(self, exchange: int, content: RecordDict) -> dict[str, np.ndarray]:
        """The payload of a later exchange's reply, checked against the codec (or refused)."""
        with refusing():
            if protocol.PAYLOAD not in content:
                raise RejectedReply("record 'payload' is missing")
            arrays = from_record(content[protocol.PAYLOAD])
            validate_payload(arrays, self.codec, exchange=exchange)
        return arrays

    def _num_examples(self, metrics: Mapping[str, object]) -> int:
        weight = metrics.get("num-examples", 0)
        if not _is_number(weight) or weight < 1 or float(weight) != int(weight):
            raise RejectedReply(f"num-examples={weight!r} is not a positive integer")
        weight = int(weight)
        max_batch = max(self.cfg.batch_size, self.cfg.attack_images if self.cfg.attack != "none" else 0)
        if self.cfg.local_mode == "fedsgd" and weight > max_batch:
            raise RejectedReply(f"num-examples={weight} exceeds the FedSGD batch-size {max_batch}")
        if self.num_train is not None and weight > self.num_train:
            raise RejectedReply(f"num-examples={weight} exceeds the {self.num_train} train samples")
        return weight

    def _partition(self, metrics: Mapping[str, object]) -> tuple[int, int]:
        partition_id = _metric_int(metrics, "partition-id")
        num_partitions = _metric_int(metrics, "num-partitions", default=0)
        if num_partitions and partition_id >= num_partitions:
            raise RejectedReply(f"partition-id={partition_id} is not below num-partitions={num_partitions}")
        if self.num_train is not None and num_partitions > self.num_train:
            raise RejectedReply(f"num-partitions={num_partitions} is more than the {self.num_train} train samples")
        if self.cfg.num_partitions and num_partitions != self.cfg.num_partitions:
            raise RejectedReply(f"num-partitions={num_partitions} is not the run's num-partitions="
                                f"{self.cfg.num_partitions}")
        return partition_id, num_partitions

    def check_batch_indices(self, indices: object, weight: float) -> None:
        """The FedSGD batch's train-split indices: distinct int64 values, one per example."""
        if indices is None:
            return
        if not isinstance(indices, np.ndarray) or indices.dtype != np.int64 or indices.ndim != 1:
            raise RejectedReply("batch-indices must be a 1-D int64 array")
        if len(indices) != int(weight):
            raise RejectedReply(f"{len(indices)} batch-indices for num-examples={weight}")
        validate_indices(indices, self.num_train if self.num_train is not None else np.iinfo(np.int64).max,
                         "batch-indices")

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
        with refusing():
            expected = self.expected_examples(server_round, reply.partition_id)
        if expected is not None and int(reply.weight) != expected:
            raise RejectedReply(f"num-examples={int(reply.weight)} is not the {expected} that partition "
                                f"{reply.partition_id} of {self.num_partitions} gives")

"""The one place that touches Flower's internals, and the record conversion both apps use.

Flower 1.42's ``Strategy`` base has no public helper to sample nodes; its ``FedAvg``
uses ``flwr.serverapp.strategy.strategy_utils.sample_nodes`` (waits until enough nodes
are connected, then samples them), which is not part of Flower's documented API.
fedtrust's strategy needs the same and uses it only through this module, so that a
Flower upgrade that moves it breaks one file.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """NumPy arrays as an ``ArrayRecord`` (contiguous copies; names kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as NumPy arrays."""
    return {k: a.numpy() for k, a in record.items()}


def sample_train_nodes(grid: Grid, fraction: float, min_nodes: int) -> list[int]:
    """``fraction`` of the connected nodes, at least ``min_nodes`` (waits for them), as FedAvg does."""
    num_nodes = int(len(list(grid.get_node_ids())) * fraction)
    node_ids, _ = sample_nodes(grid, min_nodes, max(num_nodes, min_nodes))
    return list(node_ids)


def messages_to(record: RecordDict, node_ids: Iterable[int], message_type: str) -> list[Message]:
    """One message carrying ``record`` per node."""
    return [Message(content=record, message_type=message_type, dst_node_id=node_id) for node_id in node_ids]

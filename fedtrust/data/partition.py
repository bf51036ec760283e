"""Split a train set among clients with Flower Datasets' partitioners.

:func:`partition_indices` returns the indices (into the train split) of one
client's partition. It runs ``flwr_datasets.partitioner.IidPartitioner`` or
``DirichletPartitioner`` (label skew, Hsu et al. 2019) on a small
``datasets.Dataset`` of ``{"label", "index"}`` rows, shuffled with the seed first
as ``flwr_datasets.FederatedDataset`` does, so the partitions are exactly Flower
Datasets' partitions of that data set. This module imports no Flower
framework code (only the ``flwr_datasets`` package).
"""

from __future__ import annotations

import functools
import hashlib
import warnings

import numpy as np

from fedtrust.data.specs import DATASET_NAMES  # noqa: F401 - re-exported for callers of this module

PARTITIONER_NAMES = ("iid", "dirichlet")
#: Smallest Dirichlet partition Flower Datasets accepts before re-sampling (its default),
#: lowered for small data sets (see :func:`min_partition_size`).
DIRICHLET_MIN_PARTITION_SIZE = 10


class _Labels:
    """Labels hashed by content, so that :func:`functools.lru_cache` can key on them."""

    __slots__ = ("_digest", "array")

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array, dtype=np.int64)
        self._digest = hashlib.sha256(self.array.tobytes()).digest() + str(self.array.shape).encode()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Labels) and self._digest == other._digest


def min_partition_size(num_items: int, num_partitions: int) -> int:
    """The Dirichlet partitioner's minimum partition size: 10, or half the mean size if that is smaller."""
    return max(1, min(DIRICHLET_MIN_PARTITION_SIZE, num_items // (2 * num_partitions)))


def _validate(labels: np.ndarray, num_partitions: int, partition_id: int, partitioner: str,
              alpha: float, seed: int) -> None:
    if partitioner not in PARTITIONER_NAMES:
        raise ValueError(f"partitioner={partitioner!r} is not known; allowed: {', '.join(PARTITIONER_NAMES)}")
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions!r} must be an integer >= 1")
    if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)) \
            or not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id={partition_id!r} must be an integer in 0..{num_partitions - 1}")
    if partitioner == "dirichlet" and not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"dirichlet alpha={alpha!r} must be a finite number > 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_partitions > labels.size:
        raise ValueError(f"num_partitions={num_partitions} is more than the {labels.size} items to split")


@functools.lru_cache(maxsize=16)
def _all_partitions(labels: _Labels, num_partitions: int, partitioner: str, alpha: float,
                    seed: int) -> tuple[np.ndarray, ...]:
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    n = labels.array.size
    table = datasets.Dataset.from_dict({"label": labels.array, "index": np.arange(n, dtype=np.int64)})
    table = table.shuffle(seed=seed)
    if partitioner == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
    else:
        part = DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=float(alpha),
                                    min_partition_size=min_partition_size(n, num_partitions),
                                    self_balancing=False, shuffle=True, seed=seed)
    part.dataset = table
    out = []
    # The Dirichlet partitioner warns once per re-draw, printing every alpha; say it once instead.
    with warnings.catch_warnings(record=True) as redraws:
        warnings.simplefilter("always")
        try:
            for pid in range(num_partitions):
                idx = np.asarray(part.load_partition(pid)["index"], dtype=np.int64)
                idx.setflags(write=False)
                out.append(idx)
        except ValueError as e:
            raise ValueError(f"dirichlet partitioning of {n} items into {num_partitions} partitions with "
                             f"alpha={alpha} failed ({e}); use a larger alpha or fewer partitions") from e
    if redraws:
        warnings.warn(f"dirichlet partitioning (alpha={alpha}, {num_partitions} partitions) was re-drawn "
                      f"{len(redraws)} time(s) to give every partition at least "
                      f"{min_partition_size(n, num_partitions)} items", stacklevel=3)
    return tuple(out)


def partition_indices(labels: np.ndarray, num_partitions: int, partition_id: int,
                      partitioner: str = "iid", alpha: float = 0.5, seed: int = 42) -> np.ndarray:
    """Indices into the train split of client ``partition_id``'s partition.

    Parameters
    ----------
    labels:
        Labels of the whole train split.
    num_partitions:
        Number of clients (>= 1, at most ``len(labels)``).
    partition_id:
        This client, ``0 .. num_partitions - 1``.
    partitioner:
        ``"iid"`` (equal random shards) or ``"dirichlet"`` (per-class proportions
        drawn from Dir(``alpha``); smaller ``alpha`` is more skewed).
    alpha:
        Dirichlet concentration, > 0 (used by ``"dirichlet"`` only).
    seed:
        Seeds the shuffle and the Dirichlet draws; the same arguments give the same
        partitions in every process.

    Returns
    -------
    np.ndarray
        Read-only int64 indices; the partitions of all ids are disjoint and cover
        ``range(len(labels))``.

    Raises
    ------
    ValueError
        On an unknown partitioner or an out-of-range argument (the message names it),
        or when the Dirichlet partitioner cannot meet its minimum partition size.
    """
    labels = np.asarray(labels)
    _validate(labels, num_partitions, partition_id, partitioner, alpha, seed)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    parts = _all_partitions(_Labels(labels), int(num_partitions), partitioner,
                            float(alpha) if partitioner == "dirichlet" else 0.0, int(seed))
    return parts[int(partition_id)]


def clear_cache() -> None:
    """Forget the partitions cached by :func:`partition_indices`."""
    _all_partitions.cache_clear()

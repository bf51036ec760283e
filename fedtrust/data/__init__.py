"""Data: dataset specs, loaders for the on-disk formats, the embedded sample, partitioning.

>>> from fedtrust.data import load_dataset, partition_indices
>>> train = load_dataset("sample", "train")            # offline, no set-up
>>> idx = partition_indices(train.labels, num_partitions=10, partition_id=0)
>>> x, y = train.to_tensors(idx)                       # float32 NCHW normalised, int64

This package imports no Flower framework code; partitioning uses Flower Datasets
(``flwr_datasets``), imported when first needed.
"""

from fedtrust.data.loading import (
    ImageData,
    clear_cache,
    default_cache_dir,
    denormalize,
    expected_layout,
    find_sample_dir,
    load_dataset,
    normalize,
)
from fedtrust.data.partition import PARTITIONER_NAMES, partition_indices
from fedtrust.data.sources import (
    CorruptDataError,
    DataNotFoundError,
    HubUnavailableError,
)
from fedtrust.data.specs import (
    BUILTIN_DATASETS,
    DATASET_NAMES,
    SPECS,
    DatasetSpec,
    get_spec,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_NAMES",
    "PARTITIONER_NAMES",
    "SPECS",
    "CorruptDataError",
    "DataNotFoundError",
    "DatasetSpec",
    "HubUnavailableError",
    "ImageData",
    "clear_cache",
    "default_cache_dir",
    "denormalize",
    "expected_layout",
    "find_sample_dir",
    "get_spec",
    "load_dataset",
    "normalize",
    "partition_indices",
]

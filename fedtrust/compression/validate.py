"""Server-side checks of a client's payload before it is decoded.

A payload from a broken or hostile client must not crash the server, poison the
aggregate or blow up its memory. The codec says exactly which arrays (names, shapes,
dtypes) each exchange's payload holds (:meth:`~fedtrust.compression.codec.Codec.expected_arrays`);
:func:`validate_payload` compares a received payload with that and raises
:class:`PayloadError` with the reason (missing or extra arrays, wrong shape or dtype,
NaN/Inf, a factor rank that does not match the configured level, a payload larger than
the configuration allows, and the codec's own checks such as Top-K's index range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedtrust.compression.codec import ArraySpec, Codec


class PayloadError(ValueError):
    """A payload that does not match what the configuration allows."""


def validate_payload(arrays: Mapping[str, np.ndarray], codec: Codec, exchange: int | None = None) -> None:
    """Raise :class:`PayloadError` unless ``arrays`` is exactly what ``codec`` sends in ``exchange``.

    Names, shapes and dtypes come from :meth:`Codec.expected_arrays`; every float must be
    finite; then the codec's own checks (:meth:`Codec.check_arrays`, e.g. Top-K's indices).
    A payload far larger than allowed is refused before its contents are read.
    """
    expected = codec.expected_arrays(exchange)
    limit = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in expected.values())
    got = sum(int(getattr(a, "nbytes", 0)) for a in arrays.values())
    if got > 2 * limit:  # refuse before looking at the contents of a huge payload
        raise PayloadError(f"payload holds {got} bytes, far more than the {limit} bytes "
                           f"{codec.name} level {codec.spec.level} allows")
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing:
        raise PayloadError(f"missing arrays: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise PayloadError(f"unexpected arrays: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    for key, want in expected.items():
        _check_array(key, arrays[key], want, codec.spec.level)
    try:
        codec.check_arrays(arrays)
    except PayloadError:
        raise
    except ValueError as err:
        raise PayloadError(str(err)) from err


def _check_array(key: str, arr: object, want: ArraySpec, level: int) -> None:
    if not isinstance(arr, np.ndarray):
        raise PayloadError(f"{key}: not an array")
    if arr.dtype != np.dtype(want.dtype):
        raise PayloadError(f"{key}: dtype {arr.dtype}, expected {want.dtype}")
    if tuple(arr.shape) != want.shape:
        if arr.ndim == 2 and len(want.shape) == 2 and arr.shape[0] == want.shape[0] and want.shape[1] == level:
            raise PayloadError(f"{key}: rank {arr.shape[1]} does not match the configured level {level}")
        raise PayloadError(f"{key}: shape {tuple(arr.shape)}, expected {want.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise PayloadError(f"{key}: holds NaN or Inf")


def validate_indices(arr: np.ndarray, bound: int, what: str) -> None:
    """Distinct indices in ``0..bound-1`` (Top-K positions, a FedSGD batch's samples)."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= bound):
        raise PayloadError(f"{what}: indices outside 0..{bound - 1}")
    if np.unique(arr).size != arr.size:
        raise PayloadError(f"{what}: repeated indices")


def validate_dense(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                   what: str = "buffers") -> None:
    """Dense float32 arrays with exactly the expected names and shapes, all finite."""
    if set(arrays) != set(expected):
        raise PayloadError(f"{what}: arrays {sorted(set(arrays) ^ set(expected))[:5]} do not match")
    for key, shape in expected.items():
        arr = arrays[key]
        if arr.dtype != np.float32 or tuple(arr.shape) != tuple(shape):
            raise PayloadError(f"{what}/{key}: {arr.dtype} {tuple(arr.shape)}, expected float32 {tuple(shape)}")
        if not np.isfinite(arr).all():
            raise PayloadError(f"{what}/{key}: holds NaN or Inf")
        if key.endswith("running_var") and bool((arr < 0).any()):
            raise PayloadError(f"{what}/{key}: a variance below 0")

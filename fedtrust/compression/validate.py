"""Server-side checks of a client's payload before it is decoded.

A payload from a broken or hostile client must not crash the server, poison the
aggregate or blow up its memory. :func:`expected_arrays` says exactly which arrays
(names, shapes, dtypes) a payload of a given compressor, level and layout holds;
:func:`validate_payload` compares a received payload with that and raises
:class:`PayloadError` with the reason (missing or extra arrays, wrong shape or
dtype, NaN/Inf, Top-K indices out of range or repeated, a PowerSGD rank that does
not match the configured level, a payload larger than the configuration allows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtrust.compression.base import (
    Layout,
    is_compressible,
    matrix_shape,
    powersgd_values_per_tensor,
)


class PayloadError(ValueError):
    """A payload that does not match what the configuration allows."""


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype an array must have."""

    shape: tuple[int, ...]
    dtype: str


def expected_arrays(compressor: str, level: int, layout: Layout, *, scope: str = "global",
                    mode: str = "allreduce", phase: str = "all",
                    min_compression_rate: float = 2.0) -> dict[str, ArraySpec]:
    """The arrays a well-formed payload holds.

    Parameters
    ----------
    phase:
        PowerSGD allreduce only: ``"p"`` (first exchange: ``dense/`` and ``p/``),
        ``"q"`` (second exchange: ``q/``) or ``"all"`` (both; also local mode).
    """
    out: dict[str, ArraySpec] = {}
    if compressor == "none":
        return {f"dense/{n}": ArraySpec(s, "float32") for n, s in layout}
    compressible = [(n, s) for n, s in layout if is_compressible(s, level, min_compression_rate)]
    dense = [(n, s) for n, s in layout if not is_compressible(s, level, min_compression_rate)]
    if compressor == "powersgd":
        want_p = phase in ("p", "all") or mode == "local"
        want_q = phase in ("q", "all") or mode == "local"
        if want_p:
            out.update({f"dense/{n}": ArraySpec(s, "float32") for n, s in dense})
        for n, s in compressible:
            rows, cols = matrix_shape(s)
            if want_p:
                out[f"p/{n}"] = ArraySpec((rows, level), "float32")
            if want_q:
                out[f"q/{n}"] = ArraySpec((cols, level), "float32")
        return out
    if compressor == "topk":
        out.update({f"dense/{n}": ArraySpec(s, "float32") for n, s in dense})
        budget = powersgd_values_per_tensor(layout, level, min_compression_rate)
        if scope == "global":
            k = sum(budget[n] for n, _ in compressible)
            out["values"] = ArraySpec((k,), "float32")
            out["indices"] = ArraySpec((k,), "int32")
        else:
            for n, _ in compressible:
                out[f"values/{n}"] = ArraySpec((budget[n],), "float32")
                out[f"indices/{n}"] = ArraySpec((budget[n],), "int32")
        return out
    raise PayloadError(f"compressor={compressor!r} is not known")


def _index_bounds(name: str, layout: Layout, level: int, min_compression_rate: float) -> int:
    """Exclusive upper bound of the Top-K indices in array ``name``."""
    if name == "indices":
        return sum(math.prod(s) for _, s in layout if is_compressible(s, level, min_compression_rate))
    shapes = dict(layout)
    return math.prod(shapes[name.split("/", 1)[1]])


def validate_payload(arrays: Mapping[str, np.ndarray], spec: Mapping[str, Any], layout: Layout,
                     phase: str = "all") -> None:
    """Raise :class:`PayloadError` unless ``arrays`` is exactly what ``spec`` allows.

    ``spec`` is a compressor spec (``{"compressor", "level", "scope", "mode", ...}``).
    """
    name, level = str(spec["compressor"]), int(spec.get("level", 1))
    rate = float(spec.get("min_compression_rate", 2.0))
    expected = expected_arrays(name, level, layout, scope=str(spec.get("scope", "global")),
                               mode=str(spec.get("mode", "allreduce")), phase=phase,
                               min_compression_rate=rate)
    limit = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in expected.values())
    got = sum(int(getattr(a, "nbytes", 0)) for a in arrays.values())
    if got > 2 * limit:  # refuse before looking at the contents of a huge payload
        raise PayloadError(f"payload holds {got} bytes, far more than the {limit} bytes "
                           f"{name} level {level} allows")
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing:
        raise PayloadError(f"missing arrays: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise PayloadError(f"unexpected arrays: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    for key, want in expected.items():
        arr = arrays[key]
        if not isinstance(arr, np.ndarray):
            raise PayloadError(f"{key}: not an array")
        if arr.dtype != np.dtype(want.dtype):
            raise PayloadError(f"{key}: dtype {arr.dtype}, expected {want.dtype}")
        if tuple(arr.shape) != want.shape:
            if key.startswith(("p/", "q/")) and arr.ndim == 2 and arr.shape[0] == want.shape[0]:
                raise PayloadError(f"{key}: rank {arr.shape[1]} does not match the configured level {level}")
            raise PayloadError(f"{key}: shape {tuple(arr.shape)}, expected {want.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise PayloadError(f"{key}: holds NaN or Inf")
        if key == "indices" or key.startswith("indices/"):
            validate_indices(arr, _index_bounds(key, layout, level, rate), key)


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

"""Packing small integers into bytes: what a quantising codec puts on the wire.

A sign is one bit and a QSGD level of ``b`` bits is ``b`` bits, so they cross the network
as ``uint8`` arrays of ``ceil(n * b / 8)`` bytes, and ``rounds.csv`` counts those bytes
(``Payload.nbytes``), not a formula. Bits are little-endian within each value and
within each byte (``np.packbits(..., bitorder="little")``); the unused bits of the last
byte are zero.
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits take."""
    return -(-count * width // 8)


def pack_uint(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers below ``2**width`` (any shape; flattened) as packed ``uint8`` bytes."""
    if not 1 <= width <= 8:
        raise ValueError(f"width must be 1..8 bits, got {width}")
    raw = np.asarray(values).reshape(-1)
    if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= 1 << width):
        raise ValueError(f"a value in {int(raw.min())}..{int(raw.max())} does not fit in {width} bits")
    flat = raw.astype(np.uint8)
    bits = (flat[:, None] >> np.arange(width, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_uint(packed: np.ndarray, count: int, width: int) -> np.ndarray:
    """The ``count`` values of ``width`` bits in ``packed`` (``uint8``; :func:`pack_uint`'s inverse)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != packed_size(count, width):
        raise ValueError(f"expected {packed_size(count, width)} uint8 bytes for {count} values of {width} bits, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    bits = np.unpackbits(packed, bitorder="little", count=count * width).reshape(count, width)
    return (bits.astype(np.uint8) << np.arange(width, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def pack_signs(negative: np.ndarray) -> np.ndarray:
    """One bit per value (1: negative), packed."""
    return pack_uint(np.asarray(negative, dtype=bool).astype(np.uint8), 1)


def unpack_signs(packed: np.ndarray, count: int) -> np.ndarray:
    """``+1.0`` / ``-1.0`` (float32) per value from :func:`pack_signs`."""
    return np.where(unpack_uint(packed, count, 1) == 1, -1.0, 1.0).astype(np.float32)

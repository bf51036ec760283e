"""Packing small integers into bytes: what a quantising codec puts on the wire.

A sign is one bit and a QSGD level of ``b`` bits is ``b`` bits, so they cross the network
as ``uint8`` arrays of ``ceil(n * b / 8)`` bytes, and ``rounds.csv`` counts those bytes
(``Payload.nbytes``), not a formula. Bits are little-endian within each value and
within each byte (``np.packbits(..., bitorder="little")``); the unused bits of the last
byte are zero.
"""

from __future__ import annotations

import numpy as np
import torch


def packed_size(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits take."""
    return -(-count * width // 8)


def _shifts(width: int) -> np.ndarray:
    return (np.arange(8, dtype=np.uint64) * np.uint64(width)).astype(np.uint64)


def pack_uint(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers below ``2**width`` (any shape; flattened) as packed ``uint8`` bytes.

    Eight values of ``width`` bits fill ``width`` bytes exactly, so the values are taken
    eight at a time (zero-padded), combined into one little-endian 64-bit word
    (value ``t`` at bits ``t * width``) and the word's first ``width`` bytes kept: the
    same bytes as ``np.packbits`` of every value's bits (little-endian), in a few passes
    over ``n / 8`` words instead of a ``n x width`` bit array.
    """
    if not 1 <= width <= 8:
        raise ValueError(f"width must be 1..8 bits, got {width}")
    raw = np.asarray(values).reshape(-1)
    if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= 1 << width):
        raise ValueError(f"a value in {int(raw.min())}..{int(raw.max())} does not fit in {width} bits")
    count = raw.size
    if width == 8:
        return raw.astype(np.uint8)
    if width == 1:
        return np.packbits(raw.astype(np.uint8), bitorder="little")
    if 8 % width == 0:  # 2 or 4 bits: whole values per byte
        per = 8 // width
        padded = np.zeros(-(-count // per) * per, dtype=np.uint8)
        padded[:count] = raw
        grouped = padded.reshape(-1, per)
        out = grouped[:, 0].copy()
        for t in range(1, per):
            out |= grouped[:, t] << np.uint8(t * width)
        return out
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint8)
    padded[:count] = raw
    grouped = padded.reshape(groups, 8)
    words = np.zeros(groups, dtype="<u8")
    for t, shift in enumerate(_shifts(width)):
        words |= grouped[:, t].astype("<u8") << shift
    return words.view(np.uint8).reshape(groups, 8)[:, :width].reshape(-1)[:packed_size(count, width)].copy()


def unpack_uint(packed: np.ndarray, count: int, width: int) -> np.ndarray:
    """The ``count`` values of ``width`` bits in ``packed`` (``uint8``; :func:`pack_uint`'s inverse)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != packed_size(count, width):
        raise ValueError(f"expected {packed_size(count, width)} uint8 bytes for {count} values of {width} bits, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    if width == 8:
        return packed.copy()
    if width == 1:
        return np.unpackbits(packed, bitorder="little", count=count)
    if 8 % width == 0:  # 2 or 4 bits: whole values per byte
        per = 8 // width
        mask = np.uint8((1 << width) - 1)
        out = np.empty((packed.size, per), dtype=np.uint8)
        for t in range(per):
            out[:, t] = (packed >> np.uint8(t * width)) & mask
        return out.reshape(-1)[:count]
    groups = -(-count // 8)
    wide = np.zeros((groups, 8), dtype=np.uint8)
    flat = np.zeros(groups * width, dtype=np.uint8)
    flat[:packed.size] = packed
    wide[:, :width] = flat.reshape(groups, width)
    words = wide.reshape(-1).view("<u8")
    mask = np.uint64((1 << width) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for t, shift in enumerate(_shifts(width)):
        out[:, t] = (words >> shift) & mask
    return out.reshape(-1)[:count]


def padding_is_zero(packed: np.ndarray, count: int, width: int) -> bool:
    """Whether the bits of ``packed`` after its ``count`` values of ``width`` bits (the last
    byte's unused ones) are zero, as :func:`pack_uint` leaves them."""
    used = count * width
    spare = 8 * np.asarray(packed).size - used
    if spare <= 0:
        return True
    last = int(np.asarray(packed).reshape(-1)[-1])
    return last >> (8 - spare) == 0


def pack_signs(negative: np.ndarray) -> np.ndarray:
    """One bit per value (1: negative), packed: :func:`pack_uint`'s bytes for width 1, with
    no range check (a bool is a bit)."""
    return np.packbits(np.asarray(negative, dtype=bool).reshape(-1), bitorder="little")


def unpack_signs(packed: np.ndarray, count: int) -> np.ndarray:
    """``+1.0`` / ``-1.0`` (float32) per value from :func:`pack_signs`."""
    return np.where(unpack_uint(packed, count, 1) == 1, -1.0, 1.0).astype(np.float32)


def signed(negative: torch.Tensor, magnitude: float | torch.Tensor) -> torch.Tensor:
    """``-magnitude`` where ``negative``, ``+magnitude`` elsewhere (float32): exactly what
    ``torch.where(negative, -magnitude, magnitude)`` gives (``1 - 2 n`` is exactly +-1, so
    nothing rounds or overflows), in passes over the data instead of ``torch.where``'s
    slow path for scalars."""
    return negative.to(torch.float32).mul_(-2.0).add_(1.0).mul_(magnitude)


def negate_where(values: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``values`` (contiguous float32) with the sign flipped where ``negative`` (a one-byte 0/1
    or bool tensor) is set, in place: the IEEE sign bit XOR-ed, which is exactly negation
    (``-x``) for every float, zeros and NaNs included, in three integer passes instead of
    ``torch.where``'s slow path. (A product ``x * -1`` may give a NaN either sign; this
    gives ``-x``'s.)"""
    flip = negative.view(torch.uint8).to(torch.int32).mul_(-(1 << 31))  # 1 -> the sign bit
    values.view(torch.int32).bitwise_xor_(flip)
    return values

"""QSGD: stochastic quantisation of each tensor to ``s`` levels (Alistarh et al. 2017).

``level`` is the number of bits of each value's magnitude level: level ``b`` (1..8)
quantises to ``s = 2^b - 1`` levels. Per tensor with ``v`` = the update (``d`` values)
and ``x_i = s |v_i| / ||v||_2`` in ``[0, s]``, the level ``l_i`` is ``floor(x_i)`` or
``floor(x_i) + 1``, up with probability ``x_i - floor(x_i)``, so that the decoded
``||v|| * sign(v_i) * l_i / s`` is an unbiased estimate of ``v_i``. On the wire:
``norm/{name}`` (one float32), ``signs/{name}`` (one bit per value, packed) and
``levels/{name}`` (``b`` bits per value, packed into ``ceil(d b / 8)`` bytes;
:mod:`fedtrust.compression.bits`): ``32 + d (b + 1)`` bits per tensor, so level 1
(s = 1, ternary) sends about 1/16 of the dense update and level 8 about 9/32. Every
tensor is quantised (biases too). QSGD is unbiased and has no error feedback
(``error-feedback`` does not apply).

Randomness: the rounding draws float32 uniforms (24 random bits each) from NumPy's
PCG64 seeded with the run's ``seed`` and a CRC-32 of every ``HASH_STRIDE``-th value of
the update, so a client's encoding is reproducible and two clients (different updates)
do not share their rounding. (PCG64 and the strided hash are for speed: NumPy draws
float32 uniforms about 2.5x faster than torch's CPU generator, and hashing the whole
45 MB update of ResNet-18 took as long as the rest of the encode.) The level is
``floor(x) + [u < x - floor(x)]``: ``x - floor(x)`` is exact in float32, so the rounding
is unbiased up to the uniforms' 2^-24 grid.

A level of ``b`` bits is at most ``s`` by construction; what a hostile client can still
send is levels no unit vector rounds to, and :meth:`QSGDCodec.check_arrays` refuses
them: ``l_i - 1 <= floor(x_i) <= x_i`` and ``sum x_i^2 = s^2``, so
``sum max(l_i - 1, 0)^2 <= s^2``. It also refuses nonzero padding bits in the packed
arrays (:func:`~fedtrust.compression.bits.padding_is_zero`).

What the server learns (the adaptive attacker's input):

* A measurement: the decoded tensor, which equals ``v`` in expectation (a ``dense``
  view; the same target as the naive attacker's, quantisation noise included).
* A bound: each ``v_i`` has the sign sent and ``|v_i|`` lies in
  ``[max(l_i - 1, 0), min(l_i + 1, s)] * ||v|| / s`` (``l_i`` was ``x_i`` rounded down or
  up). That interval per value is what the adaptive attacker adds; the naive one has
  only the measurement.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np
import torch

from fedtrust.compression.base import Compressor, Layout, Payload, to_wire
from fedtrust.compression.bits import (
    negate_where,
    pack_signs,
    pack_uint,
    packed_size,
    padding_is_zero,
    unpack_signs,
    unpack_uint,
)
from fedtrust.compression.codec import ArraySpec, Codec, CodecOption
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, dense_views

#: Largest ``level`` (bits per magnitude level; 8 bits: 255 levels).
MAX_BITS = 8
#: Every how many values of a tensor the rounding's seed hashes.
HASH_STRIDE = 64


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class QSGDCompressor(Compressor):
    """QSGD with ``2^level - 1`` levels per tensor (one compressor per client).

    Parameters
    ----------
    level:
        Bits of each magnitude level, 1..8.
    layout:
        Names and shapes of the update; taken from the first update if ``None``.
    error_feedback:
        Ignored: QSGD is unbiased and keeps no residual.
    seed:
        The run's seed (with a CRC-32 of the update's values, the rounding's seed).
    """

    name = "qsgd"

    def __init__(self, level: int = 4, layout: Layout | None = None, error_feedback: bool = False,
                 seed: int = 0) -> None:
        super().__init__(level=level, layout=layout, error_feedback=False)
        if self.level > MAX_BITS:
            raise ValueError(f"qsgd: level={level} bits is more than {MAX_BITS} (255 levels); allowed 1..{MAX_BITS}")
        self.seed = int(seed)

    @property
    def levels(self) -> int:
        """``s = 2^level - 1``."""
        return (1 << self.level) - 1

    def _generator(self, update: Mapping[str, torch.Tensor]) -> np.random.Generator:
        crc = 0
        for name, _ in self.layout:
            values = update[name].detach().to("cpu", torch.float32).reshape(-1)[::HASH_STRIDE]
            crc = zlib.crc32(values.contiguous().numpy(), crc)
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, crc])))

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        layout = self._ensure_layout(update)
        generator = self._generator(update)
        s = self.levels
        arrays: dict[str, np.ndarray] = {}
        for name, _ in layout:
            v = update[name].detach().to("cpu", torch.float32).reshape(-1)
            norm = torch.linalg.vector_norm(v)
            uniforms = torch.from_numpy(generator.random(v.numel(), dtype=np.float32))
            if float(norm) > 0:
                x = v.abs().mul_(s / norm).clamp_(max=s)  # rounding can put |v_i| s / ||v|| just above s
                level = x.to(torch.uint8)  # floor(x): truncation of a value in [0, s]
                up = uniforms < x.frac_()  # x - floor(x): exact, and 0 where x = s
                level.add_(up.view(torch.uint8))
            else:
                level = torch.zeros(v.numel(), dtype=torch.uint8)
            arrays[f"norm/{name}"] = to_wire(norm.reshape(1))
            arrays[f"signs/{name}"] = pack_signs((v < 0).numpy())
            arrays[f"levels/{name}"] = pack_uint(level.numpy(), self.level)
        return Payload(arrays)

    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        if self.layout is None:
            raise RuntimeError("qsgd: layout unknown: encode an update or pass layout=")
        out = {}
        for name, shape in self.layout:
            count = _numel(shape)
            levels = torch.from_numpy(unpack_uint(payload.arrays[f"levels/{name}"], count, self.level))
            negative = torch.from_numpy(unpack_uint(payload.arrays[f"signs/{name}"], count, 1))
            step = float(np.asarray(payload.arrays[f"norm/{name}"]).reshape(-1)[0]) / self.levels
            # (-l) * step: the sign flipped on the exact small integer l before the product, so every
            # value, NaNs of a non-finite norm included, is bit for bit the product l * (-step)
            out[name] = negate_where(levels.to(torch.float32), negative).mul_(step).reshape(shape)
        return out

    def parts(self, arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Signs (+-1), levels (float32) and the norm of tensor ``name``."""
        count = _numel(shape)
        signs = torch.from_numpy(unpack_signs(arrays[f"signs/{name}"], count))
        levels = torch.from_numpy(unpack_uint(arrays[f"levels/{name}"], count, self.level).astype(np.float32))
        return signs, levels, float(np.asarray(arrays[f"norm/{name}"]).reshape(-1)[0])

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "levels": self.levels, "seed": self.seed}


@register
class QSGDCodec(Codec):
    """QSGD, ``level`` bits per magnitude level (see the module docstring)."""

    name = "qsgd"
    family = "qsgd"
    compressor_type = QSGDCompressor
    display = "QSGD"
    has_error_feedback = False
    max_level = MAX_BITS
    options = (CodecOption("seed", "seed"),)
    label_format = "QSGD ({level} bits)"
    tag_format = "Q{level}"
    style = ("tab:brown", "s")

    def _comp(self) -> QSGDCompressor:
        comp = self.compressor()
        assert isinstance(comp, QSGDCompressor)
        return comp

    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        out = {}
        for name, shape in self.layout:
            out[f"norm/{name}"] = ArraySpec((1,), "float32")
            out[f"signs/{name}"] = ArraySpec((packed_size(_numel(shape), 1),), "uint8")
            out[f"levels/{name}"] = ArraySpec((packed_size(_numel(shape), self.spec.level),), "uint8")
        return out

    def check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A norm is not negative, the packed arrays' padding bits are zero, and the levels are
        ones a unit vector rounds to: ``sum max(l - 1, 0)^2 <= s^2`` (module docstring)."""
        bits = self.spec.level
        s = (1 << bits) - 1
        for name, shape in self.layout:
            count = _numel(shape)
            if float(arrays[f"norm/{name}"][0]) < 0:
                raise ValueError(f"qsgd: norm/{name} is negative")
            for key, width in ((f"signs/{name}", 1), (f"levels/{name}", bits)):
                if not padding_is_zero(arrays[key], count, width):
                    raise ValueError(f"qsgd: {key} has nonzero padding bits after its {count} values "
                                     f"(wrong packing: {width} bit(s) per value, little-endian)")
            above = (np.maximum(unpack_uint(arrays[f"levels/{name}"], count, bits), 1) - 1).astype(np.float32)
            excess = float(np.dot(above, above))
            if excess > s * s * (1 + 1e-4):
                raise ValueError(f"qsgd: levels/{name} are out of range for a unit vector: "
                                 f"sum max(l - 1, 0)^2 = {excess:.0f} > s^2 = {s * s} (s = {s} levels)")

    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return self._comp().decode(Payload(dict(arrays)))

    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        """The decoded tensors (unbiased estimates of the update), as dense measurements."""
        decoded = self.decode(arrays, public_state)
        return dense_views({f"dense/{n}": t for n, t in decoded.items()}, self.layout)

    def bounds(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> list[View]:
        """Per tensor, each value within one level of its sent level, with its sign."""
        comp = self._comp()
        s = comp.levels
        out = []
        for name, shape in self.layout:
            signs, levels, norm = comp.parts(arrays, name, shape)
            low = (levels - 1).clamp(min=0) * (norm / s)
            high = (levels + 1).clamp(max=s) * (norm / s)
            lo = torch.where(signs > 0, low, -high)
            hi = torch.where(signs > 0, high, -low)
            out.append(View(f"levels/{name}", "dense", (name,), (), torch.stack([lo, hi]), bound=True))
        return out


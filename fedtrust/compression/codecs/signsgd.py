"""Scaled sign compression with error feedback (EF-SignSGD, Karimireddy et al. 2019).

Per tensor, with ``p = update + residual`` (``d`` values): the client sends
``scale/{name}`` = ``||p||_1 / d`` (one float32) and ``signs/{name}`` = one bit per value
(1 where ``p_i < 0``), packed into ``ceil(d / 8)`` bytes (:mod:`fedtrust.compression.bits`).
The server decodes ``delta = scale * sign(p)`` (``sign(0) = +1``) and, with error
feedback, the client keeps ``residual = p - delta``. No level: every tensor, including
biases, costs 32 + d bits, about 1/32 of the dense update.

What the server learns (views and bounds, the adaptive attacker's input): two exact facts
per tensor, no surrogate needed.

* A measurement: ``<sign(p), p> = ||p||_1 = d * scale`` is linear in ``p`` once the
  signs are known (a ``dot`` view with the signs as its vector).
* A bound: every ``p_i`` lies in the orthant of its sign, ``[0, inf)`` or ``(-inf, 0]``
  (an interval bound view). The gradient-inversion cost compares a dummy's gradient
  with the nearest point of that orthant, so a dummy whose gradient has the client's
  signs pays nothing for them.

The naive attacker matches ``delta`` as if it were the gradient (every magnitude equal).
In round 1 (no residual) ``p`` is the client's gradient; later rounds mix in the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedtrust.compression.base import Compressor, Layout, Payload, to_wire
from fedtrust.compression.bits import pack_signs, packed_size, padding_is_zero, signed, unpack_signs, unpack_uint
from fedtrust.compression.codec import ArraySpec, Codec
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, as_tensor


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class SignSGDCompressor(Compressor):
    """EF-SignSGD (one compressor per client); ``level`` is accepted and ignored."""

    name = "signsgd"

    def __init__(self, level: int = 1, layout: Layout | None = None, error_feedback: bool = True) -> None:
        super().__init__(level=level, layout=layout, error_feedback=error_feedback)
        self._residual: dict[str, torch.Tensor] = {}

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        layout = self._ensure_layout(update)
        arrays: dict[str, np.ndarray] = {}
        for name, shape in layout:
            p = update[name].detach().to(torch.float32).reshape(-1)
            if self.error_feedback and name in self._residual:
                p = p + self._residual[name].to(p.device)
            scale = p.abs().mean()
            negative = p < 0
            arrays[f"scale/{name}"] = to_wire(scale.reshape(1))
            arrays[f"signs/{name}"] = pack_signs(negative.cpu().numpy())
            if self.error_feedback:
                self._residual[name] = p - signed(negative, scale)
        return Payload(arrays)

    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        if self.layout is None:
            raise RuntimeError("signsgd: layout unknown: encode an update or pass layout=")
        out = {}
        for name, shape in self.layout:
            negative = torch.from_numpy(unpack_uint(payload.arrays[f"signs/{name}"], _numel(shape), 1)).to(torch.bool)
            scale = float(np.asarray(payload.arrays[f"scale/{name}"]).reshape(-1)[0])
            out[name] = signed(negative, scale).reshape(shape)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"residual/{k}": v.detach().clone() for k, v in self._residual.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if any(not k.startswith("residual/") for k in state):
            raise ValueError("signsgd: unknown state keys; allowed prefix: residual/")
        self._residual = {k[len("residual/"):]: v.detach().to(torch.float32).reshape(-1).clone()
                          for k, v in state.items()}


@register
class SignSGDCodec(Codec):
    """EF-SignSGD: one scale and one bit per value, per tensor (see the module docstring)."""

    name = "signsgd"
    family = "signsgd"
    compressor_type = SignSGDCompressor
    display = "signSGD"
    levelled = False
    label_format = "EF-signSGD"
    tag_format = "sign"
    style = ("tab:purple", "D")

    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        out = {}
        for name, shape in self.layout:
            out[f"scale/{name}"] = ArraySpec((1,), "float32")
            out[f"signs/{name}"] = ArraySpec((packed_size(_numel(shape), 1),), "uint8")
        return out

    def check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A scale is a mean magnitude: not negative; the signs' padding bits are zero."""
        for name, shape in self.layout:
            if float(arrays[f"scale/{name}"][0]) < 0:
                raise ValueError(f"signsgd: scale/{name} is negative")
            if not padding_is_zero(arrays[f"signs/{name}"], _numel(shape), 1):
                raise ValueError(f"signsgd: signs/{name} has nonzero padding bits after its {_numel(shape)} "
                                 "signs (wrong packing: one bit per value, little-endian)")

    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return self.compressor().decode(Payload(dict(arrays)))

    def _signs(self, arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(unpack_signs(arrays[f"signs/{name}"], _numel(shape)))

    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        """Per tensor ``<sign(p), p> = d * scale``."""
        out = []
        for name, shape in self.layout:
            l1 = as_tensor(arrays[f"scale/{name}"]).reshape(1) * _numel(shape)
            out.append(View(f"scale/{name}", "dot", (name,), (self._signs(arrays, name, shape),), l1))
        return out

    def bounds(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> list[View]:
        """Per tensor, each value in the orthant of its sign."""
        out = []
        for name, shape in self.layout:
            signs = self._signs(arrays, name, shape)
            lo = torch.where(signs > 0, 0.0, -math.inf)
            hi = torch.where(signs > 0, math.inf, 0.0)
            out.append(View(f"signs/{name}", "dense", (name,), (), torch.stack([lo, hi]), bound=True))
        return out

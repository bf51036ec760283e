"""No compression (the paper's "Original SGD"): every tensor crosses the network as it is.

Wire format: ``dense/{name}`` for every parameter. Both attackers see the gradient itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedtrust.compression.base import (
    Compressor,
    Layout,
    Payload,
    dense_from_payload,
    to_wire,
)
from fedtrust.compression.codec import ArraySpec, Codec
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, dense_views


class NoCompressor(Compressor):
    """Sends the update dense; stateless (``error_feedback`` is accepted and has no effect).

    Parameters
    ----------
    level:
        Ignored (kept so that every compressor takes the same arguments).
    layout:
        Names and shapes of the update; taken from the first update if ``None``.
    error_feedback:
        Ignored: nothing is ever left out, so there is no residual.
    """

    name = "none"

    def __init__(self, level: int = 1, layout: Layout | None = None,
                 error_feedback: bool = True) -> None:
        super().__init__(level=level, layout=layout, error_feedback=error_feedback)

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """``dense/{name}`` = the tensor, as float32 on the CPU, for every tensor."""
        layout = self._ensure_layout(update)
        return Payload({f"dense/{name}": to_wire(update[name]) for name, _ in layout})

    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        """The dense tensors of the payload (float32, CPU), in layout order."""
        if self.layout is None:
            raise RuntimeError("none: layout unknown: encode an update or pass layout=")
        return {name: dense_from_payload(payload, name, shape) for name, shape in self.layout}


@register
class NoneCodec(Codec):
    """Plain SGD: the dense update, one exchange, no public state."""

    name = "none"
    family = "sgd"
    compressor_type = NoCompressor
    display = "SGD"
    levelled = False
    uncompressed = True
    has_error_feedback = False
    label_format = "Original SGD"
    tag_format = "SGD"
    style = ("black", "o")

    @property
    def summable(self) -> bool:
        """Secure aggregation works: every tensor is sent as it is, so the mean of the arrays is
        the mean update."""
        return True

    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        return {f"dense/{n}": ArraySpec(s, "float32") for n, s in self.layout}

    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: dense_from_payload(Payload(dict(arrays)), name, shape) for name, shape in self.layout}

    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        return dense_views(arrays, self.layout, require_all=True)

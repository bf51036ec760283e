"""What every compressor shares: the wire payload, the tensor layout and the interface.

A compressor turns a client's update (a dict of named tensors, the same names and
shapes as the model's trainable parameters) into a :class:`Payload`: exactly the
NumPy arrays that cross the network. ``decode`` turns a payload back into a dense
update. Compressors are stateful per client (error-feedback residual, PowerSGD's
warm-start Q); ``state_dict``/``load_state_dict`` carry that state between rounds.

Wire format (array names inside ``Payload.arrays``)
---------------------------------------------------
``dense/{name}``
    A tensor sent as it is (every tensor for ``none``; 1-D tensors and matrices
    that rank r would not compress at least 2x for ``powersgd`` and ``topk``).
``p/{name}``, ``q/{name}``
    PowerSGD factors of tensor ``name`` viewed as a matrix ``(shape[0], -1)``:
    P is ``(n, r)``, Q is ``(m, r)``.
``values``, ``indices``
    Top-K with ``scope="global"``: the selected values (float32) and their int32
    positions in the concatenation of the flattened compressible tensors, in
    layout order.
``values/{name}``, ``indices/{name}``
    Top-K with ``scope="layer"``: per tensor, positions in the flattened tensor.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

#: Ordered ``(name, shape)`` pairs of an update, in model parameter order.
Layout = tuple[tuple[str, tuple[int, ...]], ...]

#: PyTorch's ``powerSGD_hook`` default: compress a matrix only when it shrinks at least 2x.
MIN_COMPRESSION_RATE = 2.0


def layout_of(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> Layout:
    """The layout (names and shapes, in order) of a dict of tensors."""
    return tuple((name, tuple(int(s) for s in t.shape)) for name, t in tensors.items())


def layout_numel(layout: Layout) -> int:
    """Number of values in a dense update of this layout."""
    return sum(math.prod(shape) for _, shape in layout)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix view ``(shape[0], -1)`` used by PowerSGD (and PyTorch's hook)."""
    return int(shape[0]), int(math.prod(shape[1:]))


def is_compressible(shape: tuple[int, ...], rank: int,
                    min_compression_rate: float = MIN_COMPRESSION_RATE) -> bool:
    """Whether PowerSGD at ``rank`` compresses a tensor of ``shape`` (else it is sent dense).

    Follows PyTorch's ``_should_compress``: the tensor must have at least two
    dimensions and ``(n + m) * rank * min_compression_rate < n * m``.
    """
    if len(shape) < 2:
        return False
    n, m = matrix_shape(shape)
    return (n + m) * rank * min_compression_rate < n * m


def compressible_names(layout: Layout, rank: int,
                       min_compression_rate: float = MIN_COMPRESSION_RATE) -> list[str]:
    """Names of the tensors PowerSGD at ``rank`` compresses, in layout order."""
    return [name for name, shape in layout if is_compressible(shape, rank, min_compression_rate)]


def powersgd_values_per_tensor(layout: Layout, rank: int,
                               min_compression_rate: float = MIN_COMPRESSION_RATE) -> dict[str, int]:
    """How many float values PowerSGD at ``rank`` sends for each tensor.

    ``rank * (n + m)`` for a compressed tensor, its size for a dense one. This is
    the budget Top-K at level ``rank`` matches (the paper's "Level r").
    """
    out: dict[str, int] = {}
    for name, shape in layout:
        if is_compressible(shape, rank, min_compression_rate):
            n, m = matrix_shape(shape)
            out[name] = rank * (n + m)
        else:
            out[name] = math.prod(shape)
    return out


def max_compressible_level(layout: Layout,
                           min_compression_rate: float = MIN_COMPRESSION_RATE) -> int:
    """The largest level (rank) at which PowerSGD still compresses some tensor of ``layout``.

    Returns 0 when no tensor is compressible even at rank 1 (e.g. only 1-D tensors).
    """
    best = 0
    for _, shape in layout:
        if not is_compressible(shape, 1, min_compression_rate):
            continue
        n, m = matrix_shape(shape)
        # Largest r with (n + m) * r * rate < n * m; start from the real-valued bound
        # and step to the exact integer with the same predicate PowerSGD uses.
        r = max(1, math.ceil(n * m / ((n + m) * min_compression_rate)) - 1)
        while is_compressible(shape, r + 1, min_compression_rate):
            r += 1
        while r > 0 and not is_compressible(shape, r, min_compression_rate):
            r -= 1
        best = max(best, r)
    return best


def check_level(layout: Layout, level: int,
                min_compression_rate: float = MIN_COMPRESSION_RATE) -> None:
    """Raise ``ValueError`` unless PowerSGD/Top-K at ``level`` compresses at least one tensor.

    At a level where every tensor would be sent dense a "compressed" run is a dense
    run in disguise; the message names the largest level that still compresses.
    """
    if not compressible_names(layout, level, min_compression_rate):
        top = max_compressible_level(layout, min_compression_rate)
        if top == 0:
            raise ValueError(f"level={level} is too high for this model: none of its tensors "
                             f"is compressible at any level (min_compression_rate="
                             f"{min_compression_rate})")
        raise ValueError(f"level={level} is too high for this model: no tensor would be "
                         f"compressed (min_compression_rate={min_compression_rate}); "
                         f"the largest level that still compresses something is {top}")


@dataclass
class Payload:
    """Exactly the arrays one client sends for one update.

    Attributes
    ----------
    arrays:
        Named NumPy arrays (float32 values, int32 indices); the names follow the
        wire format in this module's docstring.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays: what crosses the network (headers aside)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def num_values(self) -> int:
        """Number of float values sent (Top-K's int32 indices not counted)."""
        return int(sum(a.size for k, a in self.arrays.items() if not k.startswith("indices")))


def to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A float32 NumPy copy of ``tensor`` on the CPU: how a value array goes on the wire."""
    return tensor.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous().numpy()


def from_wire(array: np.ndarray | torch.Tensor, device: torch.device | str | None = None
              ) -> torch.Tensor:
    """A float32 tensor (a copy, on ``device``, CPU by default) of a wire array."""
    target = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(array, torch.Tensor):
        return array.detach().to(device=target, dtype=torch.float32, copy=True)
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).to(target)


def dense_from_payload(payload: Payload, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Tensor ``name`` sent dense (``dense/{name}``), as float32 on the CPU, checked against ``shape``."""
    key = f"dense/{name}"
    if key not in payload.arrays:
        raise ValueError(f"payload has no array {key!r}")
    array = payload.arrays[key]
    if math.prod(array.shape) != math.prod(shape):
        raise ValueError(f"payload array {key!r} has shape {tuple(array.shape)}, expected {shape}")
    return from_wire(array).reshape(shape)


class Compressor(ABC):
    """A stateful, per-client update compressor.

    Subclasses implement ``encode`` and ``decode`` and keep their own state
    (residual, warm-start factors) in tensors listed by ``state_dict``.

    Parameters
    ----------
    level:
        Compression level: PowerSGD's rank r, or Top-K's "Level r" (as many
        values as PowerSGD rank r sends). Ignored by ``none``.
    layout:
        Names and shapes of the update. If ``None`` it is taken from the first
        update encoded; ``decode`` on a fresh (e.g. server-side) instance needs it.
    error_feedback:
        Add the residual (what earlier rounds did not send) to the next update.
    """

    name: str = "base"

    def __init__(self, level: int = 1, layout: Layout | None = None,
                 error_feedback: bool = True) -> None:
        if int(level) < 1:
            raise ValueError(f"level must be >= 1, got {level}")
        self.level = int(level)
        self.layout: Layout | None = tuple(layout) if layout is not None else None
        self.error_feedback = bool(error_feedback)

    # -- hooks ---------------------------------------------------------------
    @abstractmethod
    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """Compress one update (adds and refreshes the residual when error feedback is on)."""

    @abstractmethod
    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        """The dense update a payload stands for (float32 tensors on the CPU)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Private per-client state (residual, warm-start factors) as tensors."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""

    def public_state(self) -> dict[str, np.ndarray]:
        """What a server also knows about the last encode (PowerSGD's Q and P-hat)."""
        return {}

    # -- helpers -------------------------------------------------------------
    def _ensure_layout(self, update: Mapping[str, torch.Tensor]) -> Layout:
        got = layout_of(update)
        if self.layout is None:
            self.layout = got
        elif got != self.layout:
            raise ValueError(f"{self.name}: update layout differs from the compressor's layout")
        return self.layout

    def dense_nbytes(self) -> int:
        """Bytes of the dense float32 update of this layout."""
        if self.layout is None:
            raise RuntimeError("layout unknown: encode an update or pass layout=")
        return 4 * layout_numel(self.layout)

    def describe(self) -> dict[str, object]:
        """Name and options, for run records."""
        return {"compressor": self.name, "level": self.level, "error_feedback": self.error_feedback}


class LevelledCompressor(Compressor):
    """A compressor whose level decides which tensors it compresses (PowerSGD, Top-K).

    A tensor is compressible when PowerSGD rank ``level`` shrinks it more than
    ``min_compression_rate`` (:func:`is_compressible`); the others are sent dense.
    """

    def __init__(self, level: int = 1, layout: Layout | None = None, error_feedback: bool = True,
                 min_compression_rate: float = MIN_COMPRESSION_RATE) -> None:
        super().__init__(level=level, layout=layout, error_feedback=error_feedback)
        if not float(min_compression_rate) > 0:
            raise ValueError(f"min_compression_rate must be > 0, got {min_compression_rate}")
        self.min_compression_rate = float(min_compression_rate)
        if self.layout is not None:
            check_level(self.layout, self.level, self.min_compression_rate)

    def _layout_for(self, update: Mapping[str, torch.Tensor]) -> Layout:
        known = self.layout is not None
        layout = self._ensure_layout(update)
        if not known:
            check_level(layout, self.level, self.min_compression_rate)
        return layout

    def compressible(self) -> list[str]:
        """Names of the tensors this compressor compresses (the rest are sent dense)."""
        if self.layout is None:
            raise RuntimeError(f"{self.name}: layout unknown: encode an update or pass layout=")
        return compressible_names(self.layout, self.level, self.min_compression_rate)

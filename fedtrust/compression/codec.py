"""The codec interface: everything fedtrust knows about one compressor, in one class.

A *codec* owns a compressor's wire format and protocol. The client, the strategy, both
attacks and the experiments ask the codec; none of them compares compressor names.
One module per compressor in :mod:`fedtrust.compression.codecs` defines a :class:`Codec`
subclass and registers it with :func:`fedtrust.compression.registry.register`.

What a codec says
-----------------
Metadata (class attributes, no layout needed):
    ``name`` (the run-config value), ``family`` (the tables' algorithm key: ``sgd`` for
    ``none``), ``levelled`` (whether ``level`` means anything), ``max_level`` (the
    largest level it accepts, if any), ``options`` (its own
    run-config keys, :class:`CodecOption`), ``label(level)`` (a table row),
    ``tag(level)`` (a figure's point label), ``style`` (a figure's colour and marker).
Wire format (bound to a spec and a layout):
    ``exchanges`` (messages per round), :meth:`Codec.expected_arrays` (names, shapes and
    dtypes of exchange ``k``'s payload), :meth:`Codec.check_arrays` (checks beyond
    shapes, e.g. Top-K's index range).
Client:
    :meth:`Codec.compressor` (a fresh stateful per-client compressor) and
    :meth:`Codec.client_step` (exchange ``k``: what the client sends).
Server:
    :meth:`Codec.server` (a :class:`ServerProtocol`: what to broadcast, how to answer
    between exchanges, how to decode a client's arrays and what public state the server
    then knows, and the state to checkpoint).
Secure aggregation:
    :attr:`Codec.summable` (the round's mean update follows from the mean of what the
    clients sent: no compressed per-client structure, such as Top-K's own indices).
Attacker:
    :meth:`Codec.decode` (the dense update a server decodes from arrays and public
    state: the naive attacker's target) and :meth:`Codec.views` (the linear maps from a
    gradient to what was sent, each with the observed tensor: what the adaptive
    gradient-inversion attacker and the update membership attack both match), and
    :meth:`Codec.bounds` (what else the server knows: bounds on magnitudes, such as
    Top-K's "nothing unsent was larger than the smallest value sent", which the adaptive
    gradient-inversion attacker adds to its cost).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedtrust.compression.base import MIN_COMPRESSION_RATE, Compressor, Layout, Payload
from fedtrust.compression.spec import CompressorSpec
from fedtrust.compression.views import View
from fedtrust.robust import NormBound, Verdict


@dataclass(frozen=True)
class CodecOption:
    """A run-config key that a codec reads, and the compressor option it becomes.

    Attributes
    ----------
    key:
        The run-config key (``powersgd-mode``).
    option:
        The compressor's keyword argument and the spec's option name (``mode``).
    allowed:
        The allowed values, or ``()`` where the run config's own check suffices
        (``seed``).
    """

    key: str
    option: str
    allowed: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype an array of a payload must have."""

    shape: tuple[int, ...]
    dtype: str


class ServerProtocol:
    """The server's side of a codec's exchanges over one run (stateful; checkpointed).

    The default is one exchange and no public state: the server decodes each payload on
    its own. Codecs with more (PowerSGD) override the hooks.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def broadcast(self, server_round: int) -> dict[str, np.ndarray]:
        """Arrays sent to every client with the round's train message (e.g. a shared warm start)."""
        return {}

    def respond(self, exchange: int, payloads: Sequence[Mapping[str, np.ndarray]],
                weights: Sequence[float], bound: NormBound) -> tuple[dict[str, np.ndarray], list[Verdict]]:
        """What the server sends every client for exchange ``exchange`` (>= 1), from the
        accepted payloads of the exchanges before it, and the norm bound's verdict on each
        payload's contribution. Raises :class:`NonFiniteAggregate` when finite payloads
        combine into a non-finite answer."""
        raise ValueError(f"compressor {self.codec.name!r} has one exchange: there is no exchange {exchange} "
                         "to answer (the strategy only calls respond between exchanges)")

    def decode(self, node_id: int, arrays: Mapping[str, np.ndarray]
               ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """One client's dense update (float32, CPU) and the public state the server knows with it."""
        return self.codec.decode(arrays, {}), {}

    def end_round(self, payloads: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  scales: Sequence[float]) -> bool:
        """After the norm bound: update what the next round starts from; ``False`` (and no
        change) when the accepted payloads would make it non-finite."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints to checkpoint (``torch.load(weights_only=True)``-safe)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class NonFiniteAggregate(ValueError):
    """Finite client arrays that combine into a non-finite server answer."""


class Codec(ABC):
    """Everything about one compressor (see the module docstring).

    Parameters
    ----------
    spec:
        The compressor spec (its ``name`` is this codec's).
    layout:
        Names and shapes of the update (the model's trainable parameters, in order).
    """

    name: ClassVar[str]
    family: ClassVar[str]
    display: ClassVar[str]
    compressor_type: ClassVar[type[Compressor]]
    levelled: ClassVar[bool] = True
    #: The largest ``level`` this codec accepts (``None``: no limit but the layout's).
    max_level: ClassVar[int | None] = None
    #: Whether this codec sends the update as it is (the tables' "% of SGD" baseline).
    uncompressed: ClassVar[bool] = False
    has_error_feedback: ClassVar[bool] = True
    options: ClassVar[tuple[CodecOption, ...]] = ()
    style: ClassVar[tuple[str, str]] = ("tab:gray", "x")
    #: ``label(level)`` and ``tag(level)``: format strings with ``{name}`` and ``{level}``.
    label_format: ClassVar[str] = "{name} (level {level})"
    tag_format: ClassVar[str] = "{name}{level}"
    exchanges: ClassVar[int] = 1

    @property
    def summable(self) -> bool:
        """Whether secure aggregation works with this codec in practice: the round's mean
        update follows from the mean of the clients' arrays alone (same names, shapes and
        meaning for every client, and a decode linear in them). Then the weighted mean of
        what the clients sent, with the round's public state, is what a server running
        secure aggregation learns (``observe = "aggregate"``). Not by default."""
        return False

    def __init__(self, spec: CompressorSpec, layout: Layout) -> None:
        if spec.name != self.name:
            raise ValueError(f"codec {self.name!r} got a spec for {spec.name!r}")
        self.spec = spec
        self.layout: Layout = tuple(layout)

    # -------------------------------------------------------------- metadata
    @classmethod
    def label(cls, level: int) -> str:
        """The table row of this compressor at ``level``."""
        return cls.label_format.format(name=cls.name, level=level)

    @classmethod
    def tag(cls, level: int) -> str:
        """A short point label for figures."""
        return cls.tag_format.format(name=cls.name, level=level)

    @classmethod
    def algorithm_key(cls, level: int) -> str:
        """The algorithm key of the sweeps (``sgd``, ``powersgd4``, ``topk1``)."""
        return f"{cls.family}{level}" if cls.levelled else cls.family

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The compressor-specific run-config keys whose value this codec reads."""
        common = (("level",) if cls.levelled else ()) + (("error-feedback",) if cls.has_error_feedback else ())
        return common + tuple(o.key for o in cls.options)

    # -------------------------------------------------------------- wire
    @abstractmethod
    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        """The arrays of exchange ``exchange``'s payload (``None``: of all exchanges together)."""

    def check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Checks beyond names, shapes, dtypes and finiteness (raise ``ValueError``)."""

    # -------------------------------------------------------------- client
    def compressor(self) -> Compressor:
        """A fresh per-client compressor for this spec and layout."""
        return self.compressor_type(level=max(self.spec.level, 1), layout=self.layout,
                                    error_feedback=self.spec.error_feedback, **dict(self.spec.options))

    def client_step(self, compressor: Compressor, exchange: int,
                    update: Mapping[str, torch.Tensor] | None,
                    received: Mapping[str, np.ndarray]) -> Payload:
        """What a client sends in exchange ``exchange``: ``update`` in exchange 0 (with the
        round's broadcast in ``received``), the server's answer in ``received`` after it."""
        if exchange != 0 or update is None:
            raise ValueError(f"{self.name} has one exchange; got exchange {exchange}")
        return compressor.encode(update)

    # -------------------------------------------------------------- server
    def server(self) -> ServerProtocol:
        """The server's side of the protocol for one run."""
        return ServerProtocol(self)

    # -------------------------------------------------------------- attacker
    @abstractmethod
    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The dense update (float32, CPU, layout order) a server decodes from what was sent."""

    @abstractmethod
    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        """What was sent as linear maps of a gradient, each with its observed tensor."""

    def bounds(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> list[View]:
        """What the server knows of the update besides :meth:`views`: bounds on the
        magnitudes of linear maps of it (views with ``bound=True``); none by default."""
        return []

    # -------------------------------------------------------------- helpers
    @property
    def rate(self) -> float:
        """``min_compression_rate``: a tensor is compressed only if rank ``level`` shrinks it more."""
        return float(self.spec.option("min_compression_rate", MIN_COMPRESSION_RATE))

    def dense_nbytes(self) -> int:
        """Bytes of the dense float32 update of this layout."""
        return 4 * sum(int(np.prod(shape)) for _, shape in self.layout)

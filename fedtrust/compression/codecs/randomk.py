"""Random-K sparsification at Top-K's budget, its positions drawn from a seed the server sends.

Level r sends exactly as many values as Top-K level r (PowerSGD rank r's budget): tensors
PowerSGD sends dense are sent dense (``dense/{name}``); over the concatenation of the
compressible tensors (N values), K = sum of r(n + m) positions are drawn, one uniform
position in each of K equal blocks ``[floor(i N / K), floor((i + 1) N / K))`` (a CPU
generator seeded with the round's seed), and only their values are sent (``values``,
float32). The positions are not sent: the
server broadcasts the round's seed (``seed``, one int64, derived from the run's
``seed`` and the round) and every client of the round draws the same positions, so the
server (and the attacker) reproduces them, and the clients' sparse updates share one
support: the sum of their updates is what secure aggregation of ``values`` gives.
With error feedback the residual is ``M - sparse(M)``. No rescaling by ``n / K``
(error feedback, not an unbiased estimate, keeps the unsent mass; Stich et al. 2018).

Stratified, not a uniform K-subset: a value is sent with probability one over its block's
width, ``1 / floor(N / K)`` or ``1 / ceil(N / K)`` (exactly K / N when K divides N; on
ResNet-18, N / K is 10 to 300 and the two differ by at most a tenth), as in Stich et al.'s
rand-k up to that rounding, so ``E ||x - C(x)||^2`` is about ``(1 - K / N) ||x||^2`` (what
error feedback's analysis uses); the joint law differs (no two positions share a block).
The reason is speed: ``torch.randperm`` of ResNet-18's 11 M positions took 310 ms on one
CPU thread, half a forward and backward pass, on the client and again on the server;
K uniforms take a few milliseconds.

Bytes: ``4 K`` plus the dense tensors, against Top-K's ``8 K`` (values and int32 indices).

Views: the dense tensors as sent, and the gradient gathered at the round's positions
against ``values``. The selection says nothing about magnitudes, so there are no bounds:
unlike Top-K, the adaptive attacker learns only the K values.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedtrust.compression.base import (
    MIN_COMPRESSION_RATE,
    Layout,
    LevelledCompressor,
    Payload,
    dense_from_payload,
    from_wire,
    powersgd_values_per_tensor,
    to_wire,
)
from fedtrust.compression.codec import ArraySpec, Codec, CodecOption, ServerProtocol
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, as_tensor, dense_views

#: The broadcast array (and public state) holding the round's seed.
SEED_ARRAY = "seed"


def round_seed(seed: int, server_round: int) -> int:
    """The positions' seed of round ``server_round`` of a run seeded ``seed`` (32 bits: what
    torch's CPU generator keeps of a seed)."""
    return int(np.random.SeedSequence([int(seed), int(server_round)]).generate_state(1, np.uint32)[0])


def random_positions(total: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct positions in ``0..total-1`` (int64, ascending) drawn from ``seed``: one
    uniform position in each block ``[floor(i total / k), floor((i + 1) total / k))``."""
    if not 0 < k <= total:
        raise ValueError(f"randomk: cannot draw {k} positions among {total}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    bounds = torch.arange(k + 1, dtype=torch.int64) * total // k
    widths = bounds[1:] - bounds[:-1]
    offsets = (torch.rand(k, generator=generator, dtype=torch.float64) * widths).to(torch.int64)
    return bounds[:-1] + torch.minimum(offsets, widths - 1)


def seed_of(state: Mapping[str, np.ndarray], what: str) -> int:
    """The round's seed from a broadcast or public state (``ValueError`` naming ``what`` if absent)."""
    if SEED_ARRAY not in state:
        raise ValueError(f"randomk: {what} has no {SEED_ARRAY!r} array (the round's seed the server broadcasts)")
    return int(np.asarray(state[SEED_ARRAY]).reshape(-1)[0])


class RandomKCompressor(LevelledCompressor):
    """Random-K with PowerSGD rank r's value budget (one compressor per client).

    ``level``, ``layout``, ``error_feedback`` and ``min_compression_rate`` mean what they
    mean for :class:`~fedtrust.compression.codecs.topk.TopKCompressor` (the same budget of
    values per tensor, the same residual); ``seed`` is the run's seed, from which the server
    derives each round's seed (:attr:`round_seed`).
    """

    name = "randomk"

    def __init__(self, level: int = 1, layout: Layout | None = None, error_feedback: bool = True,
                 seed: int = 0, min_compression_rate: float = MIN_COMPRESSION_RATE) -> None:
        super().__init__(level=level, layout=layout, error_feedback=error_feedback,
                         min_compression_rate=min_compression_rate)
        self.seed = int(seed)
        #: The seed of the positions of the next encode (set from the server's broadcast).
        self.round_seed: int | None = None
        self._residual: dict[str, torch.Tensor] = {}
        self._drawn: tuple[int, torch.Tensor] | None = None  # the last seed's positions (a round's decodes share them)

    def budget(self) -> int:
        """K: the values PowerSGD rank r sends for the compressible tensors."""
        per_tensor = powersgd_values_per_tensor(self.layout, self.level, self.min_compression_rate)
        return sum(per_tensor[name] for name in self.compressible())

    def positions(self, seed: int) -> torch.Tensor:
        """The round's K positions in the concatenated compressible tensors (drawn once per seed)."""
        if self._drawn is None or self._drawn[0] != seed:
            shapes = dict(self.layout)
            total = sum(int(np.prod(shapes[n])) for n in self.compressible())
            self._drawn = (seed, random_positions(total, self.budget(), seed))
        return self._drawn[1]

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """Dense small tensors, and the values at the round's positions of the others."""
        layout = self._layout_for(update)
        if self.round_seed is None:
            raise ValueError("randomk: no round seed: the server's broadcast sets it before each encode")
        sparse = self.compressible()
        arrays: dict[str, np.ndarray] = {f"dense/{n}": to_wire(update[n]) for n, _ in layout if n not in sparse}
        flats = []
        for name in sparse:
            flat = update[name].detach().to(torch.float32).reshape(-1)
            if self.error_feedback and name in self._residual:
                flat = flat + self._residual[name].to(flat.device).reshape(-1)
            flats.append(flat)
        joined = torch.cat(flats)  # a new tensor: the residual is made in it, in place
        idx = self.positions(self.round_seed).to(joined.device)
        arrays["values"] = to_wire(joined[idx])
        if self.error_feedback:
            joined[idx] = 0.0
            shapes = dict(layout)
            for name, part in zip(sparse, torch.split(joined, [f.numel() for f in flats])):
                self._residual[name] = part.reshape(shapes[name])
        return Payload(arrays)

    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        """The dense update (float32, CPU) of the last round seed: zeros but at the positions."""
        if self.layout is None or self.round_seed is None:
            raise RuntimeError("randomk: layout or round seed unknown")
        shapes = dict(self.layout)
        sparse = self.compressible()
        sizes = [int(np.prod(shapes[n])) for n in sparse]
        values = from_wire(payload.arrays["values"]).reshape(-1)
        idx = self.positions(self.round_seed)
        if values.numel() != idx.numel():
            raise ValueError(f"randomk: {values.numel()} values for {idx.numel()} positions")
        joined = torch.zeros(sum(sizes), dtype=torch.float32)
        joined[idx] = values
        parts = dict(zip(sparse, torch.split(joined, sizes)))
        return {name: parts[name].reshape(shape) if name in parts  # views of one new tensor
                else dense_from_payload(payload, name, shape) for name, shape in self.layout}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``residual/{name}`` per compressible tensor (empty without error feedback)."""
        return {f"residual/{k}": v.detach().clone() for k, v in self._residual.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if any(not k.startswith("residual/") for k in state):
            raise ValueError("randomk: unknown state keys; allowed prefix: residual/")
        self._residual = {k[len("residual/"):]: v.detach().to(torch.float32).clone() for k, v in state.items()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "seed": self.seed, "min_compression_rate": self.min_compression_rate}


class RandomKServer(ServerProtocol):
    """Broadcasts each round's seed; the public state of a decoded update is that seed."""

    codec: RandomKCodec

    def __init__(self, codec: RandomKCodec) -> None:
        super().__init__(codec)
        self.current: dict[str, np.ndarray] = {}

    def broadcast(self, server_round: int) -> dict[str, np.ndarray]:
        self.current = {SEED_ARRAY: np.array([round_seed(self.codec.seed, server_round)], dtype=np.int64)}
        return dict(self.current)

    def decode(self, node_id: int, arrays: Mapping[str, np.ndarray]
               ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        return self.codec.decode(arrays, self.current), dict(self.current)


@register
class RandomKCodec(Codec):
    """Random-K at Top-K's budget, positions from the round's broadcast seed (see the module docstring)."""

    name = "randomk"
    family = "randomk"
    compressor_type = RandomKCompressor
    display = "Random-K"
    options = (CodecOption("seed", "seed"),)
    label_format = "Random-K SGD (Level {level})"
    tag_format = "R{level}"
    style = ("tab:green", "v")

    @property
    def summable(self) -> bool:
        """Secure aggregation works: every client of a round sends its values at the same
        seeded positions, so their mean is the mean update's."""
        return True

    def __init__(self, spec, layout) -> None:
        super().__init__(spec, layout)
        self._decoder: RandomKCompressor | None = None

    @property
    def seed(self) -> int:
        return int(self.spec.option("seed", 0))

    def _compressor(self, seed: int) -> RandomKCompressor:
        """The codec's own decoder set to ``seed``: one per codec, so that the server's decodes and
        views of a round's clients draw the round's positions once, not once per client."""
        if self._decoder is None:
            self._decoder = self.compressor()
        comp = self._decoder
        assert isinstance(comp, RandomKCompressor)
        comp.round_seed = seed
        return comp

    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        comp = self._compressor(0)
        sparse = set(comp.compressible())
        out = {f"dense/{n}": ArraySpec(s, "float32") for n, s in self.layout if n not in sparse}
        return {**out, "values": ArraySpec((comp.budget(),), "float32")}

    def client_step(self, compressor, exchange, update, received) -> Payload:
        if exchange != 0 or update is None:
            raise ValueError(f"randomk has one exchange; got exchange {exchange}")
        compressor.round_seed = seed_of(received, "the round's broadcast")
        return compressor.encode(update)

    def server(self) -> ServerProtocol:
        return RandomKServer(self)

    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return self._compressor(seed_of(public_state, "the public state")).decode(Payload(dict(arrays)))

    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        comp = self._compressor(seed_of(public_state, "the public state"))
        sparse = tuple(comp.compressible())
        return dense_views(arrays, self.layout) + [
            View("values", "gather", sparse, (comp.positions(comp.round_seed),),
                 as_tensor(arrays["values"]).reshape(-1))]

"""PowerSGD: rank-r power-iteration compression (Vogels et al. 2019).

Each compressible tensor is viewed as a matrix ``M`` of shape ``(shape[0], -1)``
(with the residual added when error feedback is on) and approximated by
``P_hat Q^T`` with one step of subspace iteration per round, warm-started from
the previous round's ``Q``. The arithmetic follows PyTorch's
``torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py``:

1. ``Q <- orth(Q)`` (the shared random start, or the warm-start Q),
2. ``P <- M Q``, then ``P_hat <- orth(P)`` (all-reduced across workers first),
3. ``Q <- M^T P_hat`` (all-reduced across workers),
4. approximation ``P_hat Q^T``, residual ``M - P_hat Q_i^T`` (Vogels et al., Alg. 2).

One deliberate difference from PyTorch's hook: its residual is taken after the Q
all-reduce, ``M - P_hat Q_bar^T`` (the averaged Q), which suits data-parallel workers
that see the same data distribution. Here each client keeps what *its own* message
did not carry, ``M - P_hat Q_i^T``, the per-worker error of Vogels et al.'s Algorithm 2,
which stays meaningful for federated clients with different data. With one client the
two are the same; with several, what is sent in round 1 (no residual yet, the attacks'
setting) is the same, and the residuals carried into round 2 differ.

``orth`` is :func:`orthogonalize`: Gram-Schmidt for rank <= 2, ``torch.linalg.qr``
otherwise, with epsilon 0, exactly as PyTorch's ``_orthogonalize``.

Two protocols (see ``docs/architecture.md``):

``mode="allreduce"``
    Two exchanges per round: the client sends ``p/`` (:meth:`PowerSGDCompressor.encode_p`),
    the server returns ``p_hat`` (:func:`aggregate_p`), the client sends ``q/``
    (:meth:`PowerSGDCompressor.encode_q`) and the server decodes with
    :func:`decode_allreduce` and broadcasts ``Q-bar`` (:func:`aggregate_q`,
    :meth:`PowerSGDCompressor.set_warm_start`). ``encode``/``decode`` run the same
    protocol for a single worker.
``mode="local"``
    One exchange: the client orthogonalises its own ``P`` and sends ``p/`` = P-hat
    and ``q/`` = Q; ``decode`` is ``P Q^T``.

What the server knows (:class:`PowerSGDServer`): ``Q/{name}``, the orthogonalised Q the
client multiplied with (all-reduce: the shared Q-bar of the last round, or the seeded
start; local: the client's own last ``q/``, or the seeded start), and ``P_hat/{name}``
(all-reduce: the P-hat the server computed; local: the client's ``p/``).

Views (what the adaptive attacker and the update membership attack match), with ``G``
a gradient viewed as ``(n, m)``:

* all-reduce: ``G Q`` against ``p/{name}`` (``= M Q``) and ``G^T P_hat`` against
  ``q/{name}`` (``= M^T P_hat``; without a public P-hat, a single worker's ``orth(p)``);
* local: ``G^T p`` against ``q/{name}`` and, when Q is known, ``G Q`` against
  ``p (q^T Q)``: since ``p = orth(M Q)`` spans the columns of ``M Q``,
  ``M Q = p p^T M Q = p (q^T Q)``, which the server can compute.

Bounds: none. Everything the server learns of ``M`` from PowerSGD is linear (``M Q`` and
``M^T P_hat``) and already a view; unlike Top-K's selection, nothing about what was not
sent is implied by what was (the residual ``M - P_hat Q^T`` is unconstrained).

A public ``Q/{name}`` that is not orthonormal (a warm start kept before ``orth``) is
orthogonalised as the client does; an orthonormal one is used as it is (re-running QR
could flip its columns' signs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from fedtrust.compression.base import (
    MIN_COMPRESSION_RATE,
    Layout,
    LevelledCompressor,
    Payload,
    compressible_names,
    dense_from_payload,
    from_wire,
    is_compressible,
    matrix_shape,
    to_wire,
)
from fedtrust.compression.codec import ArraySpec, Codec, CodecOption, NonFiniteAggregate, ServerProtocol
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, as_tensor, dense_views
from fedtrust.robust import NormBound, Verdict, l2_norm

MODES = ("allreduce", "local")

_STATE_PREFIXES = ("residual/", "warm_q/", "pending_m/", "public/")


# ----------------------------------------------------------------------------- math
def orthogonalize(matrix: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Orthonormalise the columns of an ``(n, r)`` matrix, as PyTorch's ``_orthogonalize``.

    Gram-Schmidt for ``r <= 2`` (and half precision), ``torch.linalg.qr`` otherwise.
    With ``epsilon = 0`` the Gram-Schmidt path divides each column by its norm; a
    column that is exactly zero is left at zero instead of becoming NaN (what
    PyTorch's hook means to do in its ``ZeroDivisionError`` branch, which a tensor
    division never reaches).

    Parameters
    ----------
    matrix:
        ``(n, r)`` with ``r <= n``; not modified.
    epsilon:
        Added to each column norm on the Gram-Schmidt path.

    Returns
    -------
    torch.Tensor
        A new ``(n, r)`` tensor with orthonormal columns spanning ``matrix``'s columns.
    """
    if matrix.ndim != 2 or matrix.shape[1] > matrix.shape[0]:
        raise ValueError(f"orthogonalize needs an (n, r) matrix with r <= n, got {tuple(matrix.shape)}")
    rank = matrix.shape[1]
    if rank > 2 and matrix.dtype not in (torch.float16, torch.bfloat16):
        return torch.linalg.qr(matrix, mode="reduced").Q
    out = matrix.clone()
    for i in range(rank):
        col = out[:, i:i + 1]
        norm = torch.linalg.vector_norm(col, dim=0, keepdim=True)
        if epsilon == 0:
            col.copy_(torch.where(norm > 0, col / norm, torch.zeros_like(col)))
        else:
            col /= norm + epsilon
        if i + 1 < rank:
            rest = out[:, i + 1:]
            rest -= torch.sum(col * rest, dim=0, keepdim=True) * col
    return out


def initial_q(layout: Layout, rank: int, seed: int,
              min_compression_rate: float = MIN_COMPRESSION_RATE) -> dict[str, torch.Tensor]:
    """The shared random start: one ``randn(m, rank)`` per compressible tensor, in layout order.

    Drawn on the CPU in float32 from a ``torch.Generator`` seeded with ``seed``, so
    every client (and the server) rebuilds the same matrices. ``encode`` orthogonalises
    them before use, as PyTorch's hook does.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shapes = dict(layout)
    out: dict[str, torch.Tensor] = {}
    for name in compressible_names(layout, rank, min_compression_rate):
        _, m = matrix_shape(shapes[name])
        out[name] = torch.randn(m, rank, generator=generator, dtype=torch.float32)
    return out


def _strip_prefix(arrays: Mapping[str, np.ndarray | torch.Tensor], prefix: str
                  ) -> dict[str, np.ndarray | torch.Tensor]:
    """Keys ``name`` or ``{prefix}name`` -> ``name``."""
    return {(k.removeprefix(prefix)): v for k, v in arrays.items()}


def _weighted_mean(payloads: Sequence[Payload], weights: Sequence[float], prefix: str
                   ) -> dict[str, torch.Tensor]:
    """Weighted mean (float32, CPU) of the arrays named ``{prefix}{name}`` of each payload."""
    if len(payloads) == 0:
        raise ValueError("need at least one payload")
    if len(weights) != len(payloads):
        raise ValueError(f"got {len(payloads)} payloads but {len(weights)} weights")
    w = [float(x) for x in weights]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
    keys = [k for k in payloads[0].arrays if k.startswith(prefix)]
    for i, payload in enumerate(payloads):
        got = [k for k in payload.arrays if k.startswith(prefix)]
        if sorted(got) != sorted(keys):
            raise ValueError(f"payload {i} has different {prefix!r} arrays than payload 0")
    total = sum(w)
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        acc = sum(wi * from_wire(p.arrays[key]) for wi, p in zip(w, payloads))
        out[key[len(prefix):]] = acc / total
    return out


# ------------------------------------------------------------------ server side
def aggregate_p(payloads: Sequence[Payload], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Server, allreduce step 2: P-hat = orth(weighted mean of the clients' ``p/`` arrays).

    Parameters
    ----------
    payloads:
        The clients' :meth:`PowerSGDCompressor.encode_p` payloads.
    weights:
        One non-negative weight per payload (e.g. number of examples).

    Returns
    -------
    dict[str, np.ndarray]
        ``name -> P_hat`` (float32, ``(n, r)``), to send to every client.
    """
    return {name: to_wire(orthogonalize(p)) for name, p in _weighted_mean(payloads, weights, "p/").items()}


def aggregate_q(payloads: Sequence[Payload], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Server, allreduce step 4: Q-bar = weighted mean of the clients' ``q/`` arrays.

    The weighted mean of the clients' decoded updates is ``P_hat Q_bar^T``; Q-bar is
    also every client's next warm start (:meth:`PowerSGDCompressor.set_warm_start`).
    """
    return {name: to_wire(q) for name, q in _weighted_mean(payloads, weights, "q/").items()}


def decode_allreduce(p_hat: Mapping[str, np.ndarray], payload_p: Payload, payload_q: Payload,
                     layout: Layout) -> dict[str, torch.Tensor]:
    """Server, allreduce step 4: one client's update ``P_hat Q_i^T`` (plus its dense tensors).

    Parameters
    ----------
    p_hat:
        ``name -> P_hat`` from :func:`aggregate_p` (a ``p/`` prefix on names is accepted).
    payload_p:
        The client's :meth:`PowerSGDCompressor.encode_p` payload (its ``dense/`` arrays).
    payload_q:
        The client's :meth:`PowerSGDCompressor.encode_q` payload (its ``q/`` arrays).
    layout:
        Names and shapes of the update.

    Returns
    -------
    dict[str, torch.Tensor]
        The dense update (float32, CPU) in layout order.
    """
    p_hat = _strip_prefix(p_hat, "p/")
    out: dict[str, torch.Tensor] = {}
    for name, shape in layout:
        if name in p_hat:
            key = f"q/{name}"
            if key not in payload_q.arrays:
                raise ValueError(f"payload_q has no array {key!r}")
            p = from_wire(p_hat[name])
            q = from_wire(payload_q.arrays[key])
            n, m = matrix_shape(shape)
            if p.shape[0] != n or q.shape[0] != m or p.shape[1] != q.shape[1]:
                raise ValueError(f"{name}: P_hat {tuple(p.shape)} and Q {tuple(q.shape)} do not "
                                 f"factor a {n}x{m} matrix")
            out[name] = (p @ q.T).reshape(shape)
        else:
            out[name] = dense_from_payload(payload_p, name, shape)
    return out


# ------------------------------------------------------------------ client side
class PowerSGDCompressor(LevelledCompressor):
    """PowerSGD with warm start and error feedback (one compressor per client).

    Parameters
    ----------
    level:
        The rank r of the approximation.
    layout:
        Names and shapes of the update; taken from the first update if ``None``.
    error_feedback:
        Keep ``residual = M - approximation`` per tensor and add it to the next update.
    mode:
        ``"allreduce"`` (two exchanges: :meth:`encode_p`, :meth:`encode_q`) or
        ``"local"`` (one exchange). ``encode``/``decode`` work in both.
    seed:
        Seed of the shared initial Q (:func:`initial_q`); the same on every client.
    min_compression_rate:
        A matrix is compressed only if rank r shrinks it more than this factor
        (PyTorch's default 2); other tensors, and all 1-D tensors, are sent dense.

    Raises
    ------
    ValueError
        Unknown ``mode``, or a level at which no tensor of the layout is compressible.
    """

    name = "powersgd"

    def __init__(self, level: int = 1, layout: Layout | None = None, error_feedback: bool = True,
                 mode: str = "allreduce", seed: int = 0,
                 min_compression_rate: float = MIN_COMPRESSION_RATE) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; allowed: {', '.join(MODES)}")
        super().__init__(level=level, layout=layout, error_feedback=error_feedback,
                         min_compression_rate=min_compression_rate)
        self.mode = mode
        self.seed = int(seed)
        self._residual: dict[str, torch.Tensor] = {}
        self._warm_q: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._public: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------ helpers
    def _matrix(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``M = update (+ residual)`` as a float32 ``(n, m)`` matrix on the update's device."""
        m = tensor.detach().to(torch.float32).reshape(matrix_shape(tuple(tensor.shape)))
        if self.error_feedback and name in self._residual:
            m = m + self._residual[name].to(m.device).reshape(m.shape)
        return m

    def _start_q(self, name: str, device: torch.device) -> torch.Tensor:
        """The orthogonalised Q this round starts from (warm start, else the shared random Q)."""
        if name not in self._warm_q:
            self._warm_q.update({k: v for k, v in initial_q(self.layout, self.level, self.seed,
                                                            self.min_compression_rate).items()
                                 if k not in self._warm_q})
        return orthogonalize(self._warm_q[name].to(device))

    def _matrices(self, update: Mapping[str, torch.Tensor], arrays: dict[str, np.ndarray]
                  ) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor, torch.Tensor]]:
        """``(name, shape, M, orth(Q))`` per compressible tensor, in layout order; the dense
        tensors go into ``arrays`` as ``dense/{name}`` on the way (so arrays keep layout order).
        Starts a new round's public state."""
        layout = self._layout_for(update)
        names = set(self.compressible())
        self._public = {}
        for name, shape in layout:
            if name not in names:
                arrays[f"dense/{name}"] = to_wire(update[name])
                continue
            m = self._matrix(name, update[name])
            yield name, shape, m, self._start_q(name, m.device)

    def _remember(self, name: str, m: torch.Tensor, p_hat: torch.Tensor, q: torch.Tensor,
                  shape: tuple[int, ...]) -> None:
        """Refresh warm start and residual after ``Q = M^T P_hat``."""
        self._warm_q[name] = q
        if self.error_feedback:
            # M - P_hat Q^T by one GEMM (beta = 1, alpha = -1), in M itself where M is this
            # round's own sum of update and residual (not a view of the caller's update)
            owned = name in self._residual
            residual = m.addmm_(p_hat, q.T, alpha=-1) if owned else torch.addmm(m, p_hat, q.T, alpha=-1)
            self._residual[name] = residual.reshape(shape)
        self._public[f"P_hat/{name}"] = p_hat

    # ------------------------------------------------------------ allreduce protocol
    def encode_p(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """Allreduce step 1: ``p/{name}`` = M Q per compressible tensor, ``dense/{name}`` otherwise.

        Keeps M until :meth:`encode_q`. Calling it again before :meth:`encode_q`
        abandons the pending round (the residual is only refreshed by :meth:`encode_q`).
        """
        if self.mode != "allreduce":
            raise ValueError(f"encode_p belongs to mode='allreduce'; this compressor has mode={self.mode!r}")
        self._pending = {}
        arrays: dict[str, np.ndarray] = {}
        for name, _, m, q in self._matrices(update, arrays):
            arrays[f"p/{name}"] = to_wire(m @ q)
            self._pending[name] = m
            self._public[f"Q/{name}"] = q
        return Payload(arrays)

    def encode_q(self, p_hat: Mapping[str, np.ndarray]) -> Payload:
        """Allreduce step 3: ``q/{name}`` = M^T P_hat; residual = M - P_hat Q_i^T; warm start = Q_i.

        Parameters
        ----------
        p_hat:
            ``name -> P_hat`` from :func:`aggregate_p` (a ``p/`` prefix on names is accepted).
        """
        if not self._pending:
            raise RuntimeError("encode_q needs a pending round: call encode_p first")
        p_hat = _strip_prefix(p_hat, "p/")
        missing = [name for name in self._pending if name not in p_hat]
        if missing:
            raise ValueError(f"p_hat lacks tensors {missing}")
        shapes = dict(self.layout)
        arrays: dict[str, np.ndarray] = {}
        for name, m in self._pending.items():
            ph = from_wire(p_hat[name], m.device)
            if tuple(ph.shape) != (m.shape[0], self.level):
                raise ValueError(f"p_hat[{name!r}] has shape {tuple(ph.shape)}, "
                                 f"expected {(m.shape[0], self.level)}")
            q = m.T @ ph
            arrays[f"q/{name}"] = to_wire(q)
            self._remember(name, m, ph, q, shapes[name])
        self._pending = {}
        return Payload(arrays)

    def set_warm_start(self, q: Mapping[str, np.ndarray]) -> None:
        """Start the next round from the server's ``Q-bar`` (``name -> (m, r)``; ``q/`` prefix accepted)."""
        if self.layout is None:
            raise RuntimeError("powersgd: layout unknown: encode an update or pass layout=")
        q = _strip_prefix(q, "q/")
        shapes = dict(self.layout)
        names = self.compressible()
        unexpected = sorted(set(q) - set(names))
        missing = [name for name in names if name not in q]
        if unexpected or missing:
            raise ValueError(f"set_warm_start: missing tensors {missing}, unexpected {unexpected}")
        for name in names:
            value = from_wire(q[name])
            expected = (matrix_shape(shapes[name])[1], self.level)
            if tuple(value.shape) != expected:
                raise ValueError(f"set_warm_start: q[{name!r}] has shape {tuple(value.shape)}, "
                                 f"expected {expected}")
            self._warm_q[name] = value

    # ------------------------------------------------------------ Compressor API
    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """Compress one update (one worker): ``p/``, ``q/`` and ``dense/`` arrays.

        ``allreduce``: ``p/`` is the raw ``M Q`` and the client's P-hat is
        :func:`aggregate_p` of its own payload (computed on the CPU from the sent
        array, so that :meth:`decode` reproduces it exactly). ``local``: ``p/`` is P-hat.
        """
        if self.mode == "allreduce":
            payload_p = self.encode_p(update)
            payload_q = self.encode_q(aggregate_p([payload_p], [1.0]))
            return Payload({**payload_p.arrays, **payload_q.arrays})
        arrays: dict[str, np.ndarray] = {}
        for name, shape, m, q_start in self._matrices(update, arrays):
            p_hat = orthogonalize(m @ q_start)
            q = m.T @ p_hat
            arrays[f"p/{name}"] = to_wire(p_hat)
            arrays[f"q/{name}"] = to_wire(q)
            self._public[f"Q/{name}"] = q_start
            self._remember(name, m, p_hat, q, shape)
        return Payload(arrays)

    def decode(self, payload: Payload) -> dict[str, torch.Tensor]:
        """The dense update (float32, CPU): ``orth(p) q^T`` (allreduce) or ``p q^T`` (local)."""
        if self.layout is None:
            raise RuntimeError("powersgd: layout unknown: encode an update or pass layout=")
        names = self.compressible()
        missing = [n for n in names if f"p/{n}" not in payload.arrays or f"q/{n}" not in payload.arrays]
        if missing:
            raise ValueError(f"powersgd: payload lacks p/ or q/ arrays for {missing}")
        if self.mode == "allreduce":
            p_hat = aggregate_p([payload], [1.0])
        else:
            p_hat = {n: payload.arrays[f"p/{n}"] for n in names}
        return decode_allreduce(p_hat, payload, payload, self.layout)

    def public_state(self) -> dict[str, np.ndarray]:
        """``Q/{name}`` (the orthogonalised Q that P was computed with) and ``P_hat/{name}``."""
        return {key: to_wire(value) for key, value in self._public.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``residual/``, ``warm_q/``, ``pending_m/`` (allreduce, mid-round) and ``public/`` tensors."""
        state: dict[str, torch.Tensor] = {}
        for prefix, tensors in (("residual/", self._residual), ("warm_q/", self._warm_q),
                                ("pending_m/", self._pending), ("public/", self._public)):
            state.update({f"{prefix}{k}": v.detach().clone() for k, v in tensors.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (replacing the current state)."""
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in _STATE_PREFIXES}
        for key, value in state.items():
            prefix = next((p for p in _STATE_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"powersgd: unknown state key {key!r}; allowed prefixes: "
                                 f"{', '.join(_STATE_PREFIXES)}")
            parts[prefix][key[len(prefix):]] = value.detach().to(torch.float32).clone()
        if parts["residual/"] and not self.error_feedback:
            raise ValueError("powersgd: state has residuals but error_feedback=False")
        self._residual = parts["residual/"]
        self._warm_q = parts["warm_q/"]
        self._pending = parts["pending_m/"]
        self._public = parts["public/"]

    def describe(self) -> dict[str, object]:
        """Name and options, for run records."""
        return {**super().describe(), "mode": self.mode, "seed": self.seed,
                "min_compression_rate": self.min_compression_rate}


def _q_used(q: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Q a client multiplies with: its warm-start Q, orthogonalised (as PyTorch's hook)."""
    return {f"Q/{k}": orthogonalize(torch.from_numpy(np.array(v, dtype=np.float32))).numpy()
            for k, v in q.items()}


def orthonormal_q(q: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    """The orthonormal Q that P was computed with, from a public ``Q/{name}`` (see the module docstring)."""
    eye = torch.eye(q.shape[1], dtype=q.dtype)
    if torch.allclose(q.T @ q, eye, atol=atol):
        return q
    return orthogonalize(q)


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _scaled(arrays: Mapping[str, np.ndarray], prefix: str, scale: float) -> Payload:
    """The arrays with those under ``prefix`` multiplied by ``scale`` (as float32)."""
    if scale == 1.0:
        return Payload(dict(arrays))
    return Payload({k: (v * np.float32(scale) if k.startswith(prefix) else v) for k, v in arrays.items()})


def _finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(v).all() for v in arrays.values())


class PowerSGDServer(ServerProtocol):
    """The server's PowerSGD state: the shared warm start (all-reduce) or each client's last Q (local).

    One client's P must not steer P-hat (every client's next Q is ``M_i^T P-hat``): in
    :meth:`respond` a P above the norm bound is scaled down to it for the average,
    whatever ``max-norm-action`` says. A clipped update's Q counts scaled like its update
    in Q-bar (the decoded update is linear in Q_i).
    """

    codec: PowerSGDCodec

    def __init__(self, codec: PowerSGDCodec) -> None:
        super().__init__(codec)
        q0 = initial_q(codec.layout, codec.spec.level, codec.seed, codec.rate)
        self.q_shared: dict[str, np.ndarray] = {k: v.numpy() for k, v in q0.items()}
        self.q_last: dict[int, dict[str, np.ndarray]] = {}
        self.p_hat: dict[str, np.ndarray] = {}

    def broadcast(self, server_round: int) -> dict[str, np.ndarray]:
        return dict(self.q_shared) if self.codec.allreduce and server_round > 1 else {}

    def respond(self, exchange: int, payloads: Sequence[Mapping[str, np.ndarray]],
                weights: Sequence[float], bound: NormBound) -> tuple[dict[str, np.ndarray], list[Verdict]]:
        verdicts = bound.judge([l2_norm(v for k, v in p.items() if k.startswith("p/")) for p in payloads],
                               action="clip")
        p_hat = aggregate_p([_scaled(p, "p/", v.scale) for p, v in zip(payloads, verdicts)], weights)
        if not _finite(p_hat):
            raise NonFiniteAggregate("the clients' P do not average to a finite P-hat")
        self.p_hat = p_hat
        return p_hat, verdicts

    def decode(self, node_id: int, arrays: Mapping[str, np.ndarray]
               ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        payload = Payload(dict(arrays))
        if self.codec.allreduce:
            decoded = decode_allreduce(self.p_hat, payload, payload, self.codec.layout)
            return decoded, {**_q_used(self.q_shared), **{f"P_hat/{k}": v for k, v in self.p_hat.items()}}
        decoded = self.codec.compressor().decode(payload)
        public = {**_q_used(self.q_last.get(node_id, self.q_shared)),
                  **{f"P_hat/{k}": v for k, v in _prefixed(arrays, "p/").items()}}
        self.q_last[node_id] = _prefixed(arrays, "q/")
        return decoded, public

    def end_round(self, payloads: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  scales: Sequence[float]) -> bool:
        if not self.codec.allreduce:
            return True
        q_bar = aggregate_q([_scaled(p, "q/", s) for p, s in zip(payloads, scales)], weights)
        if not _finite(q_bar):
            return False  # one hostile Q must not poison every later round's warm start
        self.q_shared = q_bar
        return True

    def state_dict(self) -> dict[str, object]:
        def tensors(d: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}
        return {"q_shared": tensors(self.q_shared),
                "q_last": {int(k): tensors(v) for k, v in self.q_last.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.q_shared = {k: v.numpy() for k, v in state.get("q_shared", {}).items()} or self.q_shared
        self.q_last = {int(k): {n: t.numpy() for n, t in v.items()} for k, v in state.get("q_last", {}).items()}


@register
class PowerSGDCodec(Codec):
    """PowerSGD rank r: two exchanges (all-reduce) or one (local); see the module docstring."""

    name = "powersgd"
    family = "powersgd"
    compressor_type = PowerSGDCompressor
    display = "PowerSGD"
    options = (CodecOption("powersgd-mode", "mode", MODES), CodecOption("seed", "seed"))
    label_format = "PowerSGD (Rank {level})"
    tag_format = "r{level}"
    style = ("tab:blue", "s")

    @property
    def mode(self) -> str:
        return str(self.spec.option("mode", "allreduce"))

    @property
    def allreduce(self) -> bool:
        return self.mode == "allreduce"

    @property
    def summable(self) -> bool:
        """Secure aggregation works in all-reduce mode (what PowerSGD was built for): every
        client multiplies with the same Q and P-hat, so the mean P_i and mean Q_i are the
        mean update's; in local mode each client's own P and Q are not."""
        return self.allreduce

    @property
    def exchanges(self) -> int:  # type: ignore[override]
        return 2 if self.allreduce else 1

    @property
    def seed(self) -> int:
        return int(self.spec.option("seed", 0))

    def expected_arrays(self, exchange: int | None = None) -> dict[str, ArraySpec]:
        level = self.spec.level
        want_p = exchange in (None, 0) or not self.allreduce
        want_q = exchange in (None, 1) or not self.allreduce
        out: dict[str, ArraySpec] = {}
        for name, shape in self.layout:
            if not is_compressible(shape, level, self.rate):
                if want_p:
                    out[f"dense/{name}"] = ArraySpec(shape, "float32")
                continue
            rows, cols = matrix_shape(shape)
            if want_p:
                out[f"p/{name}"] = ArraySpec((rows, level), "float32")
            if want_q:
                out[f"q/{name}"] = ArraySpec((cols, level), "float32")
        return out

    def client_step(self, compressor: PowerSGDCompressor, exchange: int,
                    update: Mapping[str, torch.Tensor] | None,
                    received: Mapping[str, np.ndarray]) -> Payload:
        if exchange == 1 and self.allreduce:
            return compressor.encode_q(received)
        if exchange != 0 or update is None:
            raise ValueError(f"powersgd mode={self.mode!r} has no exchange {exchange}")
        if received:
            compressor.set_warm_start(received)
        return compressor.encode_p(update) if self.allreduce else compressor.encode(update)

    def server(self) -> PowerSGDServer:
        return PowerSGDServer(self)

    def _factors(self, arrays: Mapping[str, np.ndarray], public: Mapping[str, np.ndarray], name: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(p, q, Q or None, P-hat)`` of tensor ``name`` as the server knows them."""
        if f"p/{name}" not in arrays or f"q/{name}" not in arrays:
            raise ValueError(f"PowerSGD payload lacks p/{name} or q/{name} (and dense/{name}); "
                             "for allreduce both exchanges are needed")
        n, m = matrix_shape(dict(self.layout)[name])
        p = as_tensor(arrays[f"p/{name}"]).reshape(n, -1)
        q = as_tensor(arrays[f"q/{name}"]).reshape(m, -1)
        q_pub = public.get(f"Q/{name}")
        q_pub = orthonormal_q(as_tensor(q_pub).reshape(m, -1)) if q_pub is not None else None
        if not self.allreduce:
            return p, q, q_pub, p
        p_hat = public.get(f"P_hat/{name}")
        return p, q, q_pub, as_tensor(p_hat).reshape(n, -1) if p_hat is not None else orthogonalize(p)

    def decode(self, arrays: Mapping[str, np.ndarray],
               public_state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.layout:
            if f"dense/{name}" in arrays:
                out[name] = as_tensor(arrays[f"dense/{name}"]).reshape(shape)
            else:
                _, q, _, p_hat = self._factors(arrays, public_state, name)
                out[name] = (p_hat @ q.T).reshape(shape)
        return out

    def views(self, arrays: Mapping[str, np.ndarray],
              public_state: Mapping[str, np.ndarray]) -> list[View]:
        views = dense_views(arrays, self.layout)
        for name, _ in self.layout:
            if f"dense/{name}" in arrays:
                continue
            p, q, q_pub, p_hat = self._factors(arrays, public_state, name)
            if q_pub is not None:  # local: M Q = P_hat R with R = P_hat^T M Q = q^T Q, all known
                views.append(View(f"p/{name}", "mq", (name,), (q_pub,),
                                  p if self.allreduce else p @ (q.T @ q_pub)))
            views.append(View(f"q/{name}", "mtp", (name,), (p_hat,), q))
        return views

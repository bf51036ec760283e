"""What the attacker matches: views of the observed update.

A *view* is one pair (transform of the dummy's dense gradient, observed tensor).
The gradient-matching cost (:mod:`fedtrust.attacks.gradinv.reconstruct`) is
summed over the views of a target. Two attackers are modelled:

``naive``
    The server decodes the payload into a dense update and takes it for the
    gradient: one ``dense`` view per parameter, the dummy's gradient against the
    decoded tensor (zeros where Top-K sent nothing, the low-rank product for
    PowerSGD). This is the paper's attacker.
``adaptive``
    The server knows the compressor, as a real one does, and compares the dummy
    only with what was actually sent:

    * tensors sent dense (``dense/{name}``): matched directly;
    * Top-K: the dummy gradient gathered at the sent ``indices`` against the sent
      ``values`` (``scope="global"``: positions in the concatenation of the
      flattened compressible tensors in layout order; ``"layer"``: per tensor);
    * PowerSGD ``allreduce``: with the dummy ``G`` viewed as ``(n, m)``, ``G Q``
      against the sent ``p/{name}`` (``= M Q`` with the public warm start
      ``Q/{name}``) and ``G^T P_hat`` against the sent ``q/{name}``
      (``= M^T P_hat`` with the public ``P_hat/{name}``; without it, a single
      worker's ``orth(p/{name})``);
    * PowerSGD ``local``: the client's own factors: ``G^T p`` against ``q/{name}``
      (``p/{name}`` is the orthogonalised P and ``q/ = M^T P``) and, when the
      warm start ``Q/{name}`` is known, ``G Q`` against ``p (q^T Q)``: since
      ``p = orth(M Q)`` spans the columns of ``M Q``, ``M Q = p p^T M Q = p (q^T Q)``,
      which the server can compute (linear, and exact also where ``M Q`` is rank
      deficient and ``orth`` returns arbitrary columns).

With error feedback the residual of earlier rounds is part of what the client
sent (``M = update + residual``); the attack matches it as it is. Round 1 (no
residual yet) is the paper's setting.

Views are data (:class:`View`); :func:`apply_view` is the one pure function that
evaluates them, so that views of independent problems can be stacked and
evaluated under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtrust.compression.base import Layout, matrix_shape
from fedtrust.compression.powersgd import orthogonalize as compressor_orthogonalize

ATTACKERS = ("naive", "adaptive")
#: Transform kinds understood by :func:`apply_view`.
VIEW_KINDS = ("dense", "gather", "mq", "mtp")


@dataclass(frozen=True)
class View:
    """One (dummy-gradient transform, observed tensor) pair.

    Attributes
    ----------
    name:
        Wire name of the observed tensor (``dense/conv1.weight``, ``values``, ``p/fc.weight`` ...).
    kind:
        The transform (:data:`VIEW_KINDS`): ``dense`` (the gradient as it is),
        ``gather`` (flattened gradients of ``params``, concatenated, at the indices
        ``aux[0]``), ``mq`` (``G Q`` with ``Q = aux[0]``), ``mtp`` (``G^T P`` with
        ``P = aux[0]``).
    params:
        Names of the parameters whose gradients the transform reads.
    aux:
        Tensors the transform needs (indices, Q, P-hat).
    observed:
        The tensor the transform's output is compared with (float32).
    """

    name: str
    kind: str
    params: tuple[str, ...]
    aux: tuple[torch.Tensor, ...]
    observed: torch.Tensor

    def signature(self) -> tuple[Any, ...]:
        """Everything but the values: views with equal signatures can be stacked."""
        return (self.kind, self.params, tuple((tuple(a.shape), a.dtype) for a in self.aux),
                tuple(self.observed.shape))

    def to(self, device: torch.device | str) -> View:
        """The view with its tensors on ``device``."""
        return View(self.name, self.kind, self.params, tuple(a.to(device) for a in self.aux),
                    self.observed.to(device))


def apply_view(kind: str, params: tuple[str, ...], aux: tuple[torch.Tensor, ...],
               grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The dummy-gradient side of a view (pure; works under ``vmap``).

    Parameters
    ----------
    kind, params, aux:
        The view's transform (see :class:`View`).
    grads:
        The dummy's dense gradient, name -> tensor.
    """
    if kind == "dense":
        return grads[params[0]]
    if kind == "gather":
        flat = torch.cat([grads[n].reshape(-1) for n in params]) if len(params) > 1 \
            else grads[params[0]].reshape(-1)
        return flat[aux[0]]
    g = grads[params[0]]
    matrix = g.reshape(g.shape[0], -1)
    if kind == "mq":
        return matrix @ aux[0]
    if kind == "mtp":
        return matrix.transpose(0, 1) @ aux[0]
    raise ValueError(f"view kind={kind!r} is not known; allowed: {', '.join(VIEW_KINDS)}")


def orthonormal_q(q: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    """The orthonormal Q that P was computed with, from a public ``Q/{name}``.

    A compressor's ``public_state()`` holds the orthogonalised Q; a server that
    tracks warm starts may hold the Q before ``orth`` (the client orthogonalises it
    before use). An already orthonormal Q is returned as it is (re-running QR
    could flip the signs of its columns); otherwise it is orthogonalised as the
    client does (:func:`fedtrust.compression.powersgd.orthogonalize`).
    """
    eye = torch.eye(q.shape[1], dtype=q.dtype)
    if torch.allclose(q.T @ q, eye, atol=atol):
        return q
    return compressor_orthogonalize(q)


def _tensor(array: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    return t.to(dtype).clone()


def naive_views(update: Mapping[str, torch.Tensor | np.ndarray], layout: Layout) -> list[View]:
    """One ``dense`` view per parameter: the decoded update taken as the gradient."""
    views = []
    for name, shape in layout:
        if name not in update:
            raise ValueError(f"the dense update has no tensor {name!r} (a model parameter)")
        obs = _tensor(update[name])
        if tuple(obs.shape) != tuple(shape):
            raise ValueError(f"update[{name!r}] has shape {tuple(obs.shape)}, the model's is {shape}")
        views.append(View(f"dense/{name}", "dense", (name,), (), obs))
    return views


def compressor_kind(spec: Mapping[str, Any]) -> str:
    """The compressor name of a spec dict (``{"compressor": "topk", ...}``)."""
    kind = str(spec.get("compressor", spec.get("name", "")))
    if kind not in ("none", "powersgd", "topk"):
        raise ValueError(f"compressor={kind!r} is not known; allowed: none, powersgd, topk")
    return kind


def adaptive_views(arrays: Mapping[str, np.ndarray], layout: Layout, spec: Mapping[str, Any],
                   public_state: Mapping[str, np.ndarray] | None = None) -> list[View]:
    """The views of an attacker who knows the compressor (see the module docstring).

    Parameters
    ----------
    arrays:
        The payload's arrays (wire names of ``fedtrust.compression.base``).
    layout:
        Names and shapes of the model's trainable parameters, in order.
    spec:
        Compressor name and options: ``{"compressor": "powersgd", "level": 1, "mode": "local"}``.
    public_state:
        PowerSGD's ``Q/{name}`` and ``P_hat/{name}`` (what the server knows).
    """
    kind = compressor_kind(spec)
    public = dict(public_state or {})
    shapes = dict(layout)
    views: list[View] = []
    for name, shape in layout:  # dense tensors, in layout order
        key = f"dense/{name}"
        if key in arrays:
            obs = _tensor(arrays[key]).reshape(shape)
            views.append(View(key, "dense", (name,), (), obs))
    dense = {v.params[0] for v in views}
    if kind == "none":
        missing = [n for n, _ in layout if n not in dense]
        if missing:
            raise ValueError(f"compressor 'none': the payload lacks dense/{missing[0]}")
        return views
    if kind == "topk":
        sparse = [n for n, _ in layout if n not in dense]
        if "values" in arrays:
            if "indices" not in arrays:
                raise ValueError("Top-K payload has 'values' but no 'indices'")
            views.append(View("values", "gather", tuple(sparse),
                              (_tensor(arrays["indices"], torch.int64).reshape(-1),),
                              _tensor(arrays["values"]).reshape(-1)))
        else:
            for name in sparse:
                if f"values/{name}" not in arrays or f"indices/{name}" not in arrays:
                    raise ValueError(f"Top-K payload lacks values/{name} or indices/{name} "
                                     "(neither scope 'global' nor 'layer')")
                views.append(View(f"values/{name}", "gather", (name,),
                                  (_tensor(arrays[f"indices/{name}"], torch.int64).reshape(-1),),
                                  _tensor(arrays[f"values/{name}"]).reshape(-1)))
        return views
    mode = str(spec.get("mode", "allreduce"))
    if mode not in ("allreduce", "local"):
        raise ValueError(f"PowerSGD mode={mode!r} is not known; allowed: allreduce, local")
    for name, shape in layout:
        if name in dense:
            continue
        if f"p/{name}" not in arrays or f"q/{name}" not in arrays:
            raise ValueError(f"PowerSGD payload lacks p/{name} or q/{name} (and dense/{name}); "
                             "for allreduce both exchanges are needed")
        n, m = matrix_shape(shapes[name])
        p = _tensor(arrays[f"p/{name}"]).reshape(n, -1)
        q = _tensor(arrays[f"q/{name}"]).reshape(m, -1)
        q_pub = public.get(f"Q/{name}")
        q_pub = orthonormal_q(_tensor(q_pub).reshape(m, -1)) if q_pub is not None else None
        if mode == "allreduce":
            if q_pub is not None:
                views.append(View(f"p/{name}", "mq", (name,), (q_pub,), p))
            p_hat = public.get(f"P_hat/{name}")
            p_hat_t = _tensor(p_hat).reshape(n, -1) if p_hat is not None else compressor_orthogonalize(p)
            views.append(View(f"q/{name}", "mtp", (name,), (p_hat_t,), q))
        else:
            if q_pub is not None:  # M Q = P_hat R with R = P_hat^T M Q = q^T Q, all known
                views.append(View(f"p/{name}", "mq", (name,), (q_pub,), p @ (q.T @ q_pub)))
            views.append(View(f"q/{name}", "mtp", (name,), (p,), q))
    return views


def decode_views(arrays: Mapping[str, np.ndarray], layout: Layout, spec: Mapping[str, Any],
                 public_state: Mapping[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """The dense update a server decodes from a payload (float32, CPU).

    Dense tensors as sent; Top-K values scattered into zeros; PowerSGD
    ``P_hat Q^T`` with ``P_hat`` the public ``P_hat/{name}`` in allreduce mode
    (the aggregated P-hat of all clients; a single worker's ``orth(p)``
    without it) and ``p Q^T`` in local mode. Used by the naive attacker and for
    label inference when no decoded update is at hand.
    """
    kind = compressor_kind(spec)
    public = dict(public_state or {})
    out: dict[str, torch.Tensor] = {}
    dense = {name for name, _ in layout if f"dense/{name}" in arrays}
    sparse = [(name, shape) for name, shape in layout if name not in dense]
    if kind == "topk" and "values" in arrays:
        total = sum(int(np.prod(s)) for _, s in sparse)
        flat = torch.zeros(total)
        flat[_tensor(arrays["indices"], torch.int64).reshape(-1)] = _tensor(arrays["values"]).reshape(-1)
        offset = 0
        for name, shape in sparse:
            size = int(np.prod(shape))
            out[name] = flat[offset:offset + size].reshape(shape)
            offset += size
    for name, shape in layout:
        if name in dense:
            out[name] = _tensor(arrays[f"dense/{name}"]).reshape(shape)
        elif name in out:
            continue
        elif kind == "topk":
            flat = torch.zeros(int(np.prod(shape)))
            flat[_tensor(arrays[f"indices/{name}"], torch.int64).reshape(-1)] = \
                _tensor(arrays[f"values/{name}"]).reshape(-1)
            out[name] = flat.reshape(shape)
        elif kind == "powersgd":
            n, m = matrix_shape(shape)
            p = _tensor(arrays[f"p/{name}"]).reshape(n, -1)
            q = _tensor(arrays[f"q/{name}"]).reshape(m, -1)
            if str(spec.get("mode", "allreduce")) == "allreduce":
                p_hat = public.get(f"P_hat/{name}")
                p = _tensor(p_hat).reshape(n, -1) if p_hat is not None else compressor_orthogonalize(p)
            out[name] = (p @ q.T).reshape(shape)
        else:
            raise ValueError(f"compressor 'none': the payload lacks dense/{name}")
    return {name: out[name] for name, _ in layout}


def build_views(attacker: str, layout: Layout, *, decoded: Mapping[str, torch.Tensor] | None = None,
                arrays: Mapping[str, np.ndarray] | None = None, spec: Mapping[str, Any] | None = None,
                public_state: Mapping[str, np.ndarray] | None = None) -> list[View]:
    """The attacker's views of one observed update.

    Parameters
    ----------
    attacker:
        ``"naive"`` or ``"adaptive"``.
    layout:
        The model's trainable parameters (names and shapes, in order).
    decoded:
        The dense update the server decoded (naive); decoded from ``arrays`` when absent.
    arrays, spec, public_state:
        The payload, the compressor spec and its public state (adaptive).
    """
    if attacker not in ATTACKERS:
        raise ValueError(f"attacker={attacker!r} is not known; allowed: {', '.join(ATTACKERS)}")
    if attacker == "naive":
        if decoded is None:
            if arrays is None or spec is None:
                raise ValueError("the naive attacker needs a dense update or a payload with its compressor")
            decoded = decode_views(arrays, layout, spec, public_state)
        return naive_views(decoded, layout)
    if arrays is None:
        if decoded is None:
            raise ValueError("the adaptive attacker needs the payload")
        if spec is not None and compressor_kind(spec) != "none":
            raise ValueError(f"the adaptive attacker needs the payload the client sent, not a decoded "
                             f"update, for compressor {compressor_kind(spec)!r}")
        return naive_views(decoded, layout)
    return adaptive_views(arrays, layout, spec or {"compressor": "none"}, public_state)

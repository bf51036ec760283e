"""Views: what was sent, as a linear map of a gradient and the tensor observed.

A *view* pairs a transform of a dense gradient (a dict ``name -> tensor`` over the
model's trainable parameters) with the tensor the server observed. Every codec
(:meth:`fedtrust.compression.codec.Codec.views`) describes its payload as views; the
adaptive gradient-inversion attacker matches a dummy's gradient through them and the
update membership attack maps candidates' per-sample gradients through the same views.

Views are data (:class:`View`); :func:`apply_view` is the one pure function that
evaluates them (it works under ``torch.func.vmap``, so views of independent problems
can be stacked and per-sample gradients mapped in one call, :func:`apply_view_batched`).

Kinds
-----
``dense``   the gradient of ``params[0]`` as it is;
``gather``  the flattened gradients of ``params``, concatenated in order, at the
            indices ``aux[0]``;
``mq``      ``G Q`` with ``G`` the gradient of ``params[0]`` viewed as ``(shape[0], -1)``
            and ``Q = aux[0]``;
``mtp``     ``G^T P`` with ``P = aux[0]``;
``masked``  the flattened gradients of ``params``, concatenated in order, times the
            0/1 mask ``aux[0]`` (zero where the mask is 0);
``dot``     the inner product of the flattened gradients of ``params`` with ``aux[0]``
            (one value: signSGD's ``sum_i sign(g_i) g_i = ||g||_1``).

Bounds
------
A view with ``bound=True`` is not a measurement but a constraint on the client's update:
with a one-element ``observed`` ``t``, every element of its transform had a magnitude of
at most ``t``; with ``observed`` of shape ``(2, k)``, the ``k`` elements of its flattened
transform lay between ``observed[0]`` and ``observed[1]`` (either may be infinite).
Top-K's selection is the first kind (a coordinate not sent was no larger in magnitude
than the smallest one sent); signSGD's signs (an orthant) and QSGD's levels (an interval
per coordinate) are the second (:meth:`fedtrust.compression.codec.Codec.bounds`).
The gradient-inversion cost (:func:`fedtrust.attacks.gradinv.reconstruct.gradient_cost`)
compares a dummy with the nearest observation the bound allows; the update membership
attack uses only the measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import vmap

#: Transform kinds understood by :func:`apply_view`.
VIEW_KINDS = ("dense", "gather", "mq", "mtp", "masked", "dot")


@dataclass(frozen=True)
class View:
    """One (gradient transform, observed tensor) pair.

    Attributes
    ----------
    name:
        Wire name of the observed tensor (``dense/conv1.weight``, ``values``, ``p/fc.weight`` ...).
    kind:
        The transform (:data:`VIEW_KINDS`).
    params:
        Names of the parameters whose gradients the transform reads.
    aux:
        Tensors the transform needs (indices, Q, P-hat).
    observed:
        The tensor the transform's output is compared with (float32); for a bound, the
        largest magnitude any element of the transform had (one element), or the lower
        and upper limit of each element of the flattened transform (``(2, k)``).
    bound:
        Whether ``observed`` bounds the transform's magnitudes rather than equals it.
    """

    name: str
    kind: str
    params: tuple[str, ...]
    aux: tuple[torch.Tensor, ...]
    observed: torch.Tensor
    bound: bool = False

    def signature(self) -> tuple[Any, ...]:
        """Everything but the values: views with equal signatures can be stacked."""
        return (self.kind, self.params, tuple((tuple(a.shape), a.dtype) for a in self.aux),
                tuple(self.observed.shape), self.bound)

    @property
    def transform(self) -> tuple[str, tuple[str, ...], bool]:
        """``(kind, params, bound)``: what the attack's step functions need to know of the view."""
        return (self.kind, self.params, self.bound)

    def to(self, device: torch.device | str) -> View:
        """The view with its tensors on ``device``."""
        return View(self.name, self.kind, self.params, tuple(a.to(device) for a in self.aux),
                    self.observed.to(device), self.bound)


def apply_view(kind: str, params: tuple[str, ...], aux: tuple[torch.Tensor, ...],
               grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The gradient side of a view (pure; works under ``vmap``).

    Parameters
    ----------
    kind, params, aux:
        The view's transform (see :class:`View`).
    grads:
        A dense gradient, name -> tensor.
    """
    if kind == "dense":
        return grads[params[0]]
    if kind in ("gather", "masked", "dot"):
        flat = torch.cat([grads[n].reshape(-1) for n in params]) if len(params) > 1 \
            else grads[params[0]].reshape(-1)
        if kind == "dot":
            return (flat * aux[0]).sum().reshape(1)
        return flat[aux[0]] if kind == "gather" else flat * aux[0]
    g = grads[params[0]]
    matrix = g.reshape(g.shape[0], -1)
    if kind == "mq":
        return matrix @ aux[0]
    if kind == "mtp":
        return matrix.transpose(0, 1) @ aux[0]
    raise ValueError(f"view kind={kind!r} is not known; allowed: {', '.join(VIEW_KINDS)}")


def apply_view_batched(view: View, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The view's transform of a batch of gradients ``{name: (B, *shape)}``, flattened: ``(B, k)``."""
    needed = {n: grads[n] for n in view.params}
    out = vmap(lambda g: apply_view(view.kind, view.params, view.aux, g))(needed)
    return out.reshape(out.shape[0], -1)


def as_tensor(array: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU copy of a wire array (or tensor) as ``dtype``."""
    t = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    return t.to(dtype).clone()


def dense_views(arrays: Mapping[str, Any], layout: tuple[tuple[str, tuple[int, ...]], ...],
                require_all: bool = False) -> list[View]:
    """One ``dense`` view per tensor sent dense (``dense/{name}``), in layout order."""
    views = []
    for name, shape in layout:
        key = f"dense/{name}"
        if key in arrays:
            views.append(View(key, "dense", (name,), (), as_tensor(arrays[key]).reshape(shape)))
        elif require_all:
            raise ValueError(f"the payload lacks {key}")
    return views

"""What the attacker matches: views of the observed update.

A *view* is one pair (linear map of the dummy's dense gradient, observed tensor); see
:mod:`fedtrust.compression.views`. The gradient-matching cost
(:mod:`fedtrust.attacks.gradinv.reconstruct`) is summed over the views of a target.
Two attackers are modelled:

``naive``
    The server decodes the payload into a dense update and takes it for the
    gradient: one ``dense`` view per parameter, the dummy's gradient against the
    decoded tensor (zeros where Top-K sent nothing, the low-rank product for
    PowerSGD). This is the paper's attacker.
``adaptive``
    The server knows the compressor, as a real one does, and compares the dummy
    only with what was actually sent: the codec's views
    (:meth:`fedtrust.compression.codec.Codec.views`; each codec module's docstring
    says what they are for its compressor), and with what the protocol tells it
    besides: the codec's bounds (:meth:`~fedtrust.compression.codec.Codec.bounds`;
    Top-K: nothing unsent was larger than the smallest value sent), which the cost
    turns into the nearest observation the bounds allow
    (:func:`fedtrust.attacks.gradinv.reconstruct.gradient_cost`). Its views leave what
    was not sent free, which can leave the optimisation badly constrained (Top-K at
    level 1 sends 19 of the ConvNet's first-layer coordinates); so it also optimises the
    naive objective as extra starts (:func:`surrogate_views`) and keeps whichever start
    its own cost judges best. Both criteria are computed from what the server holds;
    the true image is used for scoring only.

With error feedback the residual of earlier rounds is part of what the client
sent (``M = update + residual``); the attack matches it as it is. Round 1 (no
residual yet) is the paper's setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedtrust.compression import CompressorSpec, Layout, get_codec
from fedtrust.compression.views import View, apply_view, as_tensor

ATTACKERS = ("naive", "adaptive")

__all__ = ["ATTACKERS", "View", "apply_view", "build_views", "decode_views", "naive_views", "surrogate_views"]


def naive_views(update: Mapping[str, torch.Tensor | np.ndarray], layout: Layout) -> list[View]:
    """One ``dense`` view per parameter: the decoded update taken as the gradient."""
    views = []
    for name, shape in layout:
        if name not in update:
            raise ValueError(f"the dense update has no tensor {name!r} (a model parameter)")
        obs = as_tensor(update[name])
        if tuple(obs.shape) != tuple(shape):
            raise ValueError(f"update[{name!r}] has shape {tuple(obs.shape)}, the model's is {shape}")
        views.append(View(f"dense/{name}", "dense", (name,), (), obs))
    return views


def decode_views(arrays: Mapping[str, np.ndarray], layout: Layout,
                 spec: CompressorSpec | Mapping[str, Any],
                 public_state: Mapping[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """The dense update a server decodes from a payload (float32, CPU): the codec's ``decode``."""
    return get_codec(spec, layout).decode(arrays, dict(public_state or {}))


def build_views(attacker: str, layout: Layout, *, decoded: Mapping[str, torch.Tensor] | None = None,
                arrays: Mapping[str, np.ndarray] | None = None,
                spec: CompressorSpec | Mapping[str, Any] | None = None,
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
    if arrays is None or spec is None:
        raise ValueError("the adaptive attacker needs the payload the client sent and its compressor spec")
    codec = get_codec(spec, layout)
    public = dict(public_state or {})
    return codec.views(arrays, public) + codec.bounds(arrays, public)


def surrogate_views(attacker: str, layout: Layout, views: Sequence[View], *,
                    decoded: Mapping[str, torch.Tensor] | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None,
                    spec: CompressorSpec | Mapping[str, Any] | None = None,
                    public_state: Mapping[str, np.ndarray] | None = None) -> tuple[tuple[View, ...], ...]:
    """Other objectives the attacker optimises besides ``views`` (its own).

    The adaptive attacker also runs the naive objective (the decoded update taken as
    the gradient) where it differs from its own; the naive attacker has no others.
    """
    if attacker != "adaptive":
        return ()
    naive = build_views("naive", layout, decoded=decoded, arrays=arrays, spec=spec, public_state=public_state)
    same = len(naive) == len(views) and all(
        a.signature() == b.signature() and torch.equal(a.observed, b.observed)
        and all(torch.equal(x, y) for x, y in zip(a.aux, b.aux)) for a, b in zip(naive, views))
    return () if same else (tuple(naive),)

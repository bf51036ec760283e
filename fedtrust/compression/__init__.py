"""Update compressors: ``none``, ``powersgd`` and ``topk``.

Build one with :func:`get_compressor`; the wire format is documented in
:mod:`fedtrust.compression.base`. The PowerSGD server side of the two-exchange
``allreduce`` protocol is :func:`aggregate_p`, :func:`aggregate_q` and
:func:`decode_allreduce`.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from fedtrust.compression.base import (
    MIN_COMPRESSION_RATE,
    Compressor,
    Layout,
    Payload,
    check_level,
    compressible_names,
    is_compressible,
    layout_numel,
    layout_of,
    max_compressible_level,
    powersgd_values_per_tensor,
)
from fedtrust.compression.none import NoCompressor
from fedtrust.compression.powersgd import (
    MODES as POWERSGD_MODES,
)
from fedtrust.compression.powersgd import (
    PowerSGDCompressor,
    aggregate_p,
    aggregate_q,
    decode_allreduce,
    initial_q,
    orthogonalize,
)
from fedtrust.compression.topk import SCOPES as TOPK_SCOPES
from fedtrust.compression.topk import TopKCompressor

COMPRESSOR_NAMES = ("none", "powersgd", "topk")

_CLASSES: dict[str, type[Compressor]] = {
    "none": NoCompressor,
    "powersgd": PowerSGDCompressor,
    "topk": TopKCompressor,
}


def compressor_options(name: str) -> tuple[str, ...]:
    """The keyword options (besides ``level`` and ``layout``) compressor ``name`` accepts."""
    if name not in _CLASSES:
        raise ValueError(f"compressor={name!r} is not known; allowed: {', '.join(COMPRESSOR_NAMES)}")
    params = inspect.signature(_CLASSES[name].__init__).parameters
    return tuple(p for p in params if p not in ("self", "level", "layout"))


def get_compressor(name: str, level: int = 1, layout: Layout | None = None,
                   **options: Any) -> Compressor:
    """Build a compressor by name.

    Parameters
    ----------
    name:
        ``"none"``, ``"powersgd"`` or ``"topk"``.
    level:
        PowerSGD's rank r, or Top-K's "Level r" (ignored by ``none``).
    layout:
        Names and shapes of the update (needed to ``decode`` before any ``encode``).
    **options:
        ``error_feedback`` (all); ``mode``, ``seed``, ``min_compression_rate``
        (powersgd); ``scope``, ``min_compression_rate`` (topk).

    Raises
    ------
    ValueError
        Unknown name or option, or a bad option value; the message names the key
        and the allowed values.
    """
    allowed = compressor_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"option {unknown[0]!r} is not known for compressor={name!r}; "
                         f"allowed: {', '.join(allowed)}")
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise ValueError(f"level={level!r} must be an integer >= 1")
    if "error_feedback" in options and not isinstance(options["error_feedback"], bool):
        raise ValueError(f"error_feedback={options['error_feedback']!r} must be True or False")
    if "seed" in options and (isinstance(options["seed"], bool)
                              or not isinstance(options["seed"], numbers.Integral)):
        raise ValueError(f"seed={options['seed']!r} must be an integer")
    return _CLASSES[name](level=level, layout=layout, **options)


__all__ = [
    "COMPRESSOR_NAMES",
    "MIN_COMPRESSION_RATE",
    "POWERSGD_MODES",
    "TOPK_SCOPES",
    "Compressor",
    "Layout",
    "NoCompressor",
    "Payload",
    "PowerSGDCompressor",
    "TopKCompressor",
    "aggregate_p",
    "aggregate_q",
    "check_level",
    "compressible_names",
    "compressor_options",
    "decode_allreduce",
    "get_compressor",
    "initial_q",
    "is_compressible",
    "layout_numel",
    "layout_of",
    "max_compressible_level",
    "orthogonalize",
    "powersgd_values_per_tensor",
]

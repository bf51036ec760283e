"""Update compressors, one codec module each, found through a registry.

A codec (:class:`~fedtrust.compression.codec.Codec`) owns everything about one
compressor: encode and decode, the arrays of each exchange and their validation, the
server's side of its protocol and public state, and the linear maps from a gradient to
what was sent (:mod:`fedtrust.compression.views`). The codecs live in
:mod:`fedtrust.compression.codecs` (``none``, ``powersgd``, ``topk``); build one with
:func:`get_codec` from a :class:`CompressorSpec`, or a bare per-client compressor with
:func:`get_compressor`. The wire format shared by all is in
:mod:`fedtrust.compression.base`.
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
from fedtrust.compression.codec import ArraySpec, Codec, CodecOption, NonFiniteAggregate, ServerProtocol
from fedtrust.compression.registry import (
    codec_class,
    codec_names,
    compressor_config_keys,
    get_codec,
    register,
    spec_from_run_config,
)
from fedtrust.compression.spec import CompressorSpec
from fedtrust.compression.views import View, apply_view, apply_view_batched


def compressor_options(name: str) -> tuple[str, ...]:
    """The keyword options (besides ``level`` and ``layout``) compressor ``name`` accepts."""
    params = inspect.signature(codec_class(name).compressor_type.__init__).parameters
    return tuple(p for p in params if p not in ("self", "level", "layout"))


def get_compressor(name: str, level: int = 1, layout: Layout | None = None,
                   **options: Any) -> Compressor:
    """Build a bare per-client compressor by name (its codec's ``compressor_type``).

    Parameters
    ----------
    name:
        A registered compressor (:func:`codec_names`).
    level:
        The compression level (ignored by compressors without levels).
    layout:
        Names and shapes of the update (needed to ``decode`` before any ``encode``).
    **options:
        ``error_feedback`` and the compressor's own options (:func:`compressor_options`).

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
    return codec_class(name).compressor_type(level=level, layout=layout, **options)


__all__ = [
    "MIN_COMPRESSION_RATE",
    "ArraySpec",
    "Codec",
    "CodecOption",
    "Compressor",
    "CompressorSpec",
    "Layout",
    "NonFiniteAggregate",
    "Payload",
    "ServerProtocol",
    "View",
    "apply_view",
    "apply_view_batched",
    "check_level",
    "codec_class",
    "codec_names",
    "compressible_names",
    "compressor_config_keys",
    "compressor_options",
    "get_codec",
    "get_compressor",
    "is_compressible",
    "layout_numel",
    "layout_of",
    "max_compressible_level",
    "powersgd_values_per_tensor",
    "register",
    "spec_from_run_config",
]

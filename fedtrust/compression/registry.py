"""The codec registry: compressor name -> :class:`~fedtrust.compression.codec.Codec` class.

Every module in :mod:`fedtrust.compression.codecs` is imported on first use; a module
registers its codec with the :func:`register` decorator. Adding a compressor is one new
module there (plus its tests): nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from fedtrust.compression.base import Layout
from fedtrust.compression.codec import Codec
from fedtrust.compression.spec import CompressorSpec

_CODECS: dict[str, type[Codec]] = {}
_LOADED = False


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` known under ``cls.name``."""
    known = _CODECS.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"compressor name {cls.name!r} is registered twice ({known} and {cls})")
    _CODECS[cls.name] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    from fedtrust.compression import codecs

    for module in sorted(pkgutil.iter_modules(codecs.__path__), key=lambda m: m.name):
        importlib.import_module(f"{codecs.__name__}.{module.name}")
    _LOADED = True


def codec_names() -> tuple[str, ...]:
    """The registered compressor names (``none`` first, then by name)."""
    _load()
    return tuple(sorted(_CODECS, key=lambda n: (n != "none", n)))


def codec_class(name: str) -> type[Codec]:
    """The codec class of compressor ``name``; ``ValueError`` naming the allowed ones."""
    _load()
    if name not in _CODECS:
        raise ValueError(f"compressor={name!r} is not known; allowed: {', '.join(codec_names())}")
    return _CODECS[name]


def get_codec(spec: CompressorSpec | Mapping[str, Any], layout: Layout) -> Codec:
    """The codec of ``spec`` (a spec or its dict form) bound to ``layout``."""
    spec = CompressorSpec.from_dict(spec)
    return codec_class(spec.name)(spec, layout)


def compressor_config_keys() -> tuple[str, ...]:
    """Every run-config key that some codec reads (each codec reads a subset)."""
    keys: list[str] = []
    for name in codec_names():
        keys += [k for k in _CODECS[name].config_keys() if k not in keys]
    return tuple(keys)


def spec_from_run_config(flat: Mapping[str, Any]) -> CompressorSpec:
    """The compressor spec of a run config given with run-config key names (hyphens).

    Options are taken from the codec's :class:`~fedtrust.compression.codec.CodecOption`
    keys; a value outside an option's allowed ones raises ``ValueError`` naming the key.
    """
    cls = codec_class(str(flat["compressor"]))
    options = {}
    for opt in cls.options:
        value = flat[opt.key]
        if opt.allowed and value not in opt.allowed:
            raise ValueError(f"{opt.key}={value!r} is not known; allowed: {', '.join(map(str, opt.allowed))}")
        options[opt.option] = value
    return CompressorSpec(name=cls.name, level=int(flat["level"]) if cls.levelled else 0,
                          error_feedback=bool(flat["error-feedback"]) if cls.has_error_feedback else False,
                          options=tuple(options.items()))

"""The compressor spec: which compressor a run uses, at which level, with which options.

One frozen record read and written by every layer (the run config builds it, the client
and the server build their codec from it, intercepted updates and result rows carry it).
Its dict form (:meth:`CompressorSpec.to_dict`) is the flat mapping stored with
intercepted updates: ``{"compressor": "powersgd", "level": 1, "error_feedback": True,
"mode": "allreduce", "seed": 42}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_COMMON = ("compressor", "level", "error_feedback")


@dataclass(frozen=True)
class CompressorSpec:
    """A compressor's name, level and options.

    Attributes
    ----------
    name:
        A registered codec name (:func:`fedtrust.compression.registry.codec_names`).
    level:
        PowerSGD's rank, Top-K's "Level r"; ``0`` for compressors without levels.
    error_feedback:
        Whether the client adds what earlier rounds did not send to its next update.
    options:
        The codec's own options (``mode``, ``seed``, ``scope``, ...), sorted by name.
    """

    name: str
    level: int = 0
    error_feedback: bool = True
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in dict(self.options).items())))

    def option(self, key: str, default: Any = None) -> Any:
        """The value of option ``key`` (``default`` when the spec does not set it)."""
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The flat form stored with intercepted updates and in result files."""
        return {"compressor": self.name, "level": self.level, "error_feedback": self.error_feedback,
                **dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | CompressorSpec) -> CompressorSpec:
        """Read :meth:`to_dict`'s form (a spec is returned as it is)."""
        if isinstance(data, CompressorSpec):
            return data
        if "compressor" not in data:
            raise ValueError(f"a compressor spec needs the key 'compressor'; got keys {sorted(data)}")
        name = str(data["compressor"])
        from fedtrust.compression.registry import codec_class  # the registry imports this module

        levelled = codec_class(name).levelled
        return cls(name=name, level=int(data.get("level", 0)) if levelled else 0,
                   error_feedback=bool(data.get("error_feedback", True)),
                   options=tuple((k, v) for k, v in data.items() if k not in _COMMON))

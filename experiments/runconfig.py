"""Run configs of sweep cells: the app's defaults, ``--set`` overrides, canonical form and hash.

A cell's run config is *complete*: every key of ``[tool.flwr.app.config]`` with its
value, so the hash of a cell changes whenever any setting that reaches the app
changes (a new default in ``pyproject.toml`` included). Keys that do not matter for a
given config (e.g. the attack settings of a run without an attack, the options of a
compressor the run does not use) are reset to their defaults first, so that cells that
run the same experiment share one key. Which keys matter when is not kept here: it is
the "matters when" column of the app's table of run-config keys
(:func:`fedtrust.config_keys.ignored_keys`; a compressor's keys matter when its codec
reads them).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.config_keys import ignored_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"

#: Cell kinds: gradient inversion (Table 1), black-box MIA on a trained model (Table 2),
#: update attacks on intercepted FedSGD updates (Table 2, beyond the paper).
KINDS = ("gradinv", "mia", "update")

#: Keys written by the sweep itself, not part of a cell's identity.
PLACEMENT_KEYS = ("output-dir", "run-name")

def app_defaults(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """Every run-config key of the app with its default (``[tool.flwr.app.config]``)."""
    with pyproject.open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``0.1``, ``true``, ``'convnet'``); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@dataclass(frozen=True)
class Override:
    """One ``--set [kind:]key=value``: ``kind`` None applies to every cell kind."""

    key: str
    value: Any
    kind: str | None = None

    @classmethod
    def parse(cls, text: str) -> Override:
        """Parse ``key=value`` or ``kind:key=value`` (kinds: :data:`KINDS`)."""
        if "=" not in text:
            raise ValueError(f"--set {text!r}: expected key=value (or kind:key=value)")
        lhs, value = text.split("=", 1)
        kind = None
        if ":" in lhs:
            kind, lhs = lhs.split(":", 1)
            if kind not in KINDS:
                raise ValueError(f"--set {text!r}: unknown cell kind {kind!r}; kinds: {', '.join(KINDS)}")
        key = lhs.strip()
        if not key:
            raise ValueError(f"--set {text!r}: empty key")
        return cls(key=key, value=parse_value(value.strip()), kind=kind)


def apply_overrides(base: Mapping[str, Any], overrides: Iterable[Override], kind: str,
                    known: Iterable[str]) -> dict[str, Any]:
    """``base`` with the overrides for ``kind`` applied; unknown keys are errors."""
    known = set(known)
    out = dict(base)
    for ov in overrides:
        if ov.kind not in (None, kind):
            continue
        if ov.key not in known:
            raise ValueError(f"--set {ov.key}: not a run-config key; known keys: {', '.join(sorted(known))}")
        out[ov.key] = ov.value
    return out


def canonical(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The complete config in key order of ``defaults``, ignored keys reset to their defaults.

    Placement keys (``output-dir``, ``run-name``) are dropped. Values are normalised
    to the defaults' types (an ``int`` given for a ``float`` key becomes a float) so
    that ``lr=1`` and ``lr=1.0`` hash alike.
    """
    full = {k: cfg.get(k, v) for k, v in defaults.items()}
    extra = sorted(set(cfg) - set(defaults) - set(PLACEMENT_KEYS))
    if extra:
        raise ValueError(f"unknown run-config keys {extra}")
    for key in ignored_keys(full):
        full[key] = defaults[key]
    for key, default in defaults.items():
        value = full[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            full[key] = float(value)
    return {k: v for k, v in full.items() if k not in PLACEMENT_KEYS}


def config_hash(payload: Mapping[str, Any], length: int = 12) -> str:
    """Hex SHA-256 prefix of the canonical JSON of ``payload`` (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a run config with the app's own validator (raises ``ConfigError``)."""
    from fedtrust.config import parse_run_config

    parse_run_config(dict(cfg))

"""From a profile, datasets, algorithms and ``--set`` overrides to the list of cells to run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.profiles import Algorithm, Cell, Profile
from experiments.runconfig import (
    KINDS,
    Override,
    app_defaults,
    apply_overrides,
    canonical,
    config_hash,
    validate,
)

#: ``--set num-supernodes=N`` sets the simulation size (a federation-config key, not a run-config key).
SUPERNODES_KEY = "num-supernodes"

#: Keys the sweep sets itself: ``--set`` may not change them.
SWEEP_KEYS = {"dataset": "--datasets", "compressor": "--algorithms", "level": "--algorithms",
              "output-dir": "--out", "run-name": "the cell's name", "resume": "a rerun of the sweep"}


def resolve_dataset(name: str) -> str:
    """A ``--datasets`` entry as the app takes it: ``folder:PATH`` with an absolute PATH."""
    name = name.strip()
    if name.startswith("folder:"):
        path = Path(name[len("folder:"):]).expanduser()
        if not path.is_dir():
            raise ValueError(f"dataset {name!r}: {path} is not a folder (expected an ImageFolder tree)")
        return f"folder:{path.resolve()}"
    return name


def parse_datasets(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    """Comma list of datasets (``folder:PATH`` allowed), or the profile's."""
    names = [p for p in (text.split(",") if text else default) if p.strip()]
    if not names:
        raise ValueError("no datasets given")
    return tuple(dict.fromkeys(resolve_dataset(n) for n in names))


def parse_algorithms(text: str | None, default: Sequence[Algorithm]) -> tuple[Algorithm, ...]:
    """Comma list of algorithm keys (``sgd,powersgd1,topk4``), or the profile's; in the paper's order."""
    algos = [Algorithm.parse(p) for p in text.split(",") if p.strip()] if text else list(default)
    if not algos:
        raise ValueError("no algorithms given")
    return tuple(sorted(dict.fromkeys(algos), key=lambda a: a.sort_key))


def make_cell(kind: str, dataset: str, algorithm: Algorithm, profile: Profile,
              overrides: Iterable[Override] = (), defaults: Mapping[str, Any] | None = None) -> Cell:
    """One cell: the profile's settings for ``kind``, the dataset and algorithm, then the overrides.

    Raises ``ValueError`` (or the app's ``ConfigError``) for a config the app would refuse.
    """
    if kind not in KINDS:
        raise ValueError(f"cell kind {kind!r} is not known; kinds: {', '.join(KINDS)}")
    defaults = dict(defaults if defaults is not None else app_defaults())
    settings = profile.kinds[kind]
    overrides = list(overrides)
    for ov in overrides:
        if ov.key in SWEEP_KEYS:
            raise ValueError(f"--set {ov.key}: the sweep sets it (use {SWEEP_KEYS[ov.key]})")
    supernodes = settings.num_supernodes
    for ov in overrides:
        if ov.key == SUPERNODES_KEY and ov.kind in (None, kind):
            if isinstance(ov.value, bool) or not isinstance(ov.value, int) or ov.value < 1:
                raise ValueError(f"--set num-supernodes={ov.value!r}: expected an integer >= 1")
            supernodes = ov.value
    base = {**defaults, **settings.run_config, "dataset": dataset, **algorithm.run_config()}
    cfg = apply_overrides(base, [o for o in overrides if o.key != SUPERNODES_KEY], kind, defaults)
    if str(cfg.get("attack-clients", "")).strip().lower() == "all":
        # Name the attacked partitions (0..num_supernodes-1), so the cell's record says which they were.
        cfg["attack-clients"] = ",".join(str(i) for i in range(supernodes))
    cfg = canonical(cfg, defaults)
    validate(cfg)
    key = config_hash({"kind": kind, "run_config": cfg, "num_supernodes": supernodes})
    return Cell(kind=kind, dataset=dataset, algorithm=algorithm, run_config=cfg,
                num_supernodes=supernodes, key=key)


def build_cells(profile: Profile, kinds: Sequence[str], datasets: Sequence[str],
                algorithms: Sequence[Algorithm] | None, overrides: Iterable[Override] = (),
                defaults: Mapping[str, Any] | None = None) -> list[Cell]:
    """Every cell of ``kinds`` x ``datasets`` x ``algorithms`` (``None``: the profile's), in table order."""
    defaults = dict(defaults if defaults is not None else app_defaults())
    overrides = list(overrides)
    algorithms = profile.algorithms if algorithms is None else algorithms
    return [make_cell(kind, ds, algo, profile, overrides, defaults)
            for ds in datasets for kind in kinds for algo in algorithms]

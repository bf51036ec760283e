"""The command line shared by ``python -m experiments.table1 | table2 | tradeoff``.

Each script names the cell kinds it needs and how it writes its files; this module
parses the options, builds the cells, runs the sweep (reusing finished cells from
the shared store in ``--out``), writes the outputs and prints what was computed,
reused or failed and where every file is.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.plan import build_cells, parse_algorithms, parse_datasets
from experiments.profiles import PROFILES, Cell, Profile
from experiments.runconfig import Override, app_defaults
from experiments.store import CellRecord, CellStore
from experiments.sweep import (
    LinkFactory,
    SweepInterrupted,
    SweepResult,
    default_link_factory,
    describe,
    git_commit,
    run_sweep,
)
from experiments.tables import Table, TableMeta, records_of, write_table


@dataclass(frozen=True)
class Outputs:
    """What a script's writer gets: the sweep folder, cells, finished records and provenance."""

    out: Path
    profile: Profile
    cells: list[Cell]
    records: dict[str, CellRecord]
    meta: TableMeta
    defaults: dict[str, Any]

    def rows(self, table: Table) -> pd.DataFrame:
        """``table``'s rows for these cells and records."""
        return table.rows(self.cells, self.records)

    def write_table(self, table: Table, rows: pd.DataFrame | None = None,
                    extra_files: Sequence[Path] = ()) -> list[Path]:
        """Write ``table``'s files (its rows computed here unless given) in the sweep folder."""
        return write_table(table, self.rows(table) if rows is None else rows, out=self.out, meta=self.meta,
                           cells=self.cells, records=self.records, defaults=self.defaults, extra_files=extra_files)


@dataclass(frozen=True)
class Script:
    """One experiment script: its name, the cell kinds it runs and how it writes its files."""

    name: str
    kinds: tuple[str, ...]
    description: str
    write: Callable[[Outputs], list[Path]]
    #: How the script's cells are built (default: every kind x dataset x algorithm, :func:`build_cells`);
    #: a script with its own rows (``defences``: algorithms with and without DP) gives its own.
    plan: Callable[..., list[Cell]] = build_cells

    def main(self, argv: Sequence[str] | None = None, **kwargs: Any) -> int:
        """The script's entry point (``kwargs``: ``profiles``, ``link_factory`` for tests); see :func:`main_for`."""
        return main_for(self, argv, **kwargs)


def build_parser(script: Script, profiles: Mapping[str, Profile]) -> argparse.ArgumentParser:
    """The options every script takes."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{script.name}", description=script.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=sorted(profiles),
                        help="the grid and fixed settings (default: smoke)")
    parser.add_argument("--datasets", default=None,
                        help="comma list of datasets (cifar10, cifar100, mnist, fashion-mnist, sample, "
                             "folder:PATH); default: the profile's")
    parser.add_argument("--algorithms", default=None,
                        help="comma list of algorithms (sgd, powersgdR, topkL); default: the profile's")
    parser.add_argument("--out", default=None, help="sweep folder shared by the scripts (default: results/<profile>)")
    parser.add_argument("--force", action="store_true", help="recompute cells that are in the store")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[KIND:]KEY=VALUE",
                        help="run-config override (TOML value; repeatable); KIND (gradinv, mia, update) limits it "
                             "to one cell kind; num-supernodes=N sets the simulation size")
    parser.add_argument("--gpus", default=None,
                        help="comma list of GPU indices, one worker each, or 'none' for one CPU worker "
                             "(default: every visible GPU)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one cell may run (default: the profile's)")
    ray = parser.add_argument_group("Ray cluster (README: \"Sweeps on a Ray cluster\")")
    ray.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="run the cells as Ray tasks on this existing cluster (host:6379, ray://host:10001 or auto) "
                          "instead of local workers; --gpus is then not used")
    ray.add_argument("--cell-gpus", type=float, default=None,
                     help="GPUs each cell reserves on the cluster (default: 1 where it has GPUs, else 0)")
    ray.add_argument("--cell-cpus", type=float, default=1.0, help="CPUs each cell reserves on the cluster (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_gpus(text: str | None) -> list[int] | None:
    """``--gpus``: None (detect), [] (``none``: CPU) or a list of indices."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "cpu", ""):
        return []
    return [int(p) for p in text.split(",") if p.strip()]


def main_for(script: Script, argv: Sequence[str] | None = None, *,
             profiles: Mapping[str, Profile] = PROFILES,
             link_factory: LinkFactory = default_link_factory) -> int:
    """Run ``script``; 0 when every cell has a result, 1 when some failed, 2 for bad options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(script, profiles)
    args = parser.parse_args(argv)
    profile = profiles[args.profile]
    defaults = app_defaults()
    try:
        overrides = [Override.parse(o) for o in args.overrides]
        datasets = parse_datasets(args.datasets, profile.datasets)
        algorithms = parse_algorithms(args.algorithms, profile.algorithms) if args.algorithms else None
        cells = script.plan(profile, script.kinds, datasets, algorithms, overrides, defaults)
        gpus = parse_gpus(args.gpus)
    except ValueError as err:  # ConfigError is a ValueError
        parser.error(str(err))
    out = Path(args.out or f"results/{profile.name}").expanduser().resolve()
    command = f"python -m experiments.{script.name}" + (f" {shlex.join(argv)}" if argv else "")
    print(f"{script.name}: profile {profile.name}, {len(cells)} cells, out {out}", flush=True)
    sweep = functools.partial(run_sweep, cells, out, force=args.force, gpus=gpus,
                              timeout=args.timeout or profile.cell_timeout_s,
                              gpu_client_share=profile.gpu_client_share, script=script.name,
                              progress=not args.no_progress, link_factory=link_factory)
    try:
        if args.ray_address is None:
            result: SweepResult = sweep()
        else:
            from experiments.ray_cells import RayCluster, RayOptions

            try:
                options = RayOptions(args.ray_address, cell_gpus=args.cell_gpus, cell_cpus=args.cell_cpus)
            except ValueError as err:
                parser.error(str(err))
            with RayCluster(options, out) as cluster:
                print(cluster.describe(), flush=True)
                result = sweep(workers=cluster.workers(), link_factory=cluster.link_factory)
    except SweepInterrupted as err:
        print(f"{script.name}: stopped by signal {err.signum}; finished cells are kept in {out / 'cells.jsonl'}, "
              "a rerun continues from there", file=sys.stderr)
        return 128 + err.signum
    records = records_of(cells, CellStore(out))
    meta = TableMeta(script=script.name, profile=profile.name, command=command,
                     generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), commit=git_commit(),
                     description=profile.description)
    files = script.write(Outputs(out=out, profile=profile, cells=cells, records=records, meta=meta,
                                 defaults=defaults))
    print(describe(result, out))
    print("files:\n" + "\n".join(f"  {f}" for f in files))
    return 1 if result.failed else 0

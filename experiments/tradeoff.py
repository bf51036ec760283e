"""Trade-off: test accuracy, uplink bytes, SSIM and MIA AUC per algorithm and level.

Usage::

    python -m experiments.tradeoff --profile smoke

Runs the ``gradinv`` cells of Table 1 and the ``mia`` cells of Table 2 (reused from
the shared store when those scripts ran first with the same settings). Writes
``tradeoff.csv``, ``.md``, ``.tex``, ``.json`` and ``tradeoff.png`` (SSIM against
uplink bytes per client and round, log x) in ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.cli import Outputs, Script, main_for
from experiments.figures import tradeoff_plot
from experiments.tables import (
    TRADEOFF_CAPTION,
    TRADEOFF_COLUMNS,
    tradeoff_markdown,
    tradeoff_rows,
    tradeoff_tex,
    write_outputs,
)


def write(o: Outputs) -> list[Path]:
    """Trade-off table files and plot."""
    rows = tradeoff_rows(o.cells, o.records)
    plot = tradeoff_plot(rows, o.out / "tradeoff.png")
    return write_outputs(o.out, "tradeoff", rows=rows, columns=TRADEOFF_COLUMNS, md_body=tradeoff_markdown(rows),
                         tex_body=tradeoff_tex(rows), caption=TRADEOFF_CAPTION, notes=(), meta=o.meta,
                         cells=o.cells, records=o.records, defaults=o.defaults,
                         extra_files=[plot] if plot else [])


SCRIPT = Script(name="tradeoff", kinds=("gradinv", "mia"), write=write,
                description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None, **kwargs) -> int:
    """Entry point (``kwargs``: ``profiles``, ``link_factory`` for tests)."""
    return main_for(SCRIPT, argv, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())

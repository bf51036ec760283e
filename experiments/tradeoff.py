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

from experiments.cli import Outputs, Script
from experiments.figures import tradeoff_plot
from experiments.tables import TRADEOFF


def write(o: Outputs) -> list[Path]:
    """Trade-off table files and plot."""
    rows = o.rows(TRADEOFF)
    plot = tradeoff_plot(rows, o.out / "tradeoff.png")
    return o.write_table(TRADEOFF, rows, extra_files=[plot] if plot else [])


SCRIPT = Script(name="tradeoff", kinds=("gradinv", "mia"), write=write, description=__doc__.split("\n\n")[0])
main = SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())

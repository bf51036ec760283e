"""Table 2: membership inference per dataset and algorithm (the paper's three attacks and more).

Usage::

    python -m experiments.table2 --profile smoke
    python -m experiments.table2 --profile paper --out results/paper

Black-box attacks on the model trained by FedAvg (``mia`` cells) and update attacks
on intercepted FedSGD updates (``update`` cells). Writes ``table2.csv``, ``.md``,
``.tex`` and ``.json`` in ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.cli import Outputs, Script
from experiments.tables import TABLE2


def write(o: Outputs) -> list[Path]:
    """Table 2 files."""
    return o.write_table(TABLE2)


SCRIPT = Script(name="table2", kinds=("mia", "update"), write=write, description=__doc__.split("\n\n")[0])
main = SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())

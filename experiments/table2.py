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

from experiments.cli import Outputs, Script, main_for
from experiments.tables import (
    TABLE2_COLUMNS,
    table2_footnotes,
    table2_markdown,
    table2_rows,
    table2_tex,
    write_outputs,
)

CAPTION = ("Table 2: membership-inference attacks per dataset and algorithm. Black-box attacks query the final "
           "global model; update attacks (beyond the paper) see one client's intercepted FedSGD update.")


def write(o: Outputs) -> list[Path]:
    """Table 2 files."""
    rows = table2_rows(o.cells, o.records)
    return write_outputs(o.out, "table2", rows=rows, columns=TABLE2_COLUMNS, md_body=table2_markdown(rows),
                         tex_body=table2_tex(rows), caption=CAPTION, notes=table2_footnotes(rows), meta=o.meta,
                         cells=o.cells, records=o.records, defaults=o.defaults)


SCRIPT = Script(name="table2", kinds=("mia", "update"), write=write,
                description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None, **kwargs) -> int:
    """Entry point (``kwargs``: ``profiles``, ``link_factory`` for tests)."""
    return main_for(SCRIPT, argv, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())

"""Table 1 and Figure 1: SSIM of gradient-inversion reconstructions per dataset and algorithm.

Usage::

    python -m experiments.table1 --profile smoke
    python -m experiments.table1 --profile paper --datasets cifar10,mnist --out results/paper

Writes ``table1.csv``, ``table1.md``, ``table1.tex``, ``table1.json``, ``figure1.png``
(naive attacker, the paper's) and ``figure1_adaptive.png`` in ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.cli import Outputs, Script, main_for
from experiments.figures import figure1
from experiments.tables import (
    TABLE1_CAPTION,
    TABLE1_COLUMNS,
    table1_markdown,
    table1_rows,
    table1_tex,
    write_outputs,
)


def write(o: Outputs) -> list[Path]:
    """Table 1 files and Figure 1 (naive and adaptive attackers)."""
    rows = table1_rows(o.cells, o.records)
    figures = [p for p in (figure1(o.cells, o.records, o.out / "figure1.png", attacker="naive",
                                   images_per_dataset=o.profile.figure_images),
                           figure1(o.cells, o.records, o.out / "figure1_adaptive.png", attacker="adaptive",
                                   images_per_dataset=o.profile.figure_images)) if p is not None]
    return write_outputs(o.out, "table1", rows=rows, columns=TABLE1_COLUMNS, md_body=table1_markdown(rows),
                         tex_body=table1_tex(rows), caption=TABLE1_CAPTION, notes=(), meta=o.meta,
                         cells=o.cells, records=o.records, defaults=o.defaults, extra_files=figures)


SCRIPT = Script(name="table1", kinds=("gradinv",), write=write,
                description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None, **kwargs) -> int:
    """Entry point (``kwargs``: ``profiles``, ``link_factory`` for tests)."""
    return main_for(SCRIPT, argv, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())

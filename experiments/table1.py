"""Table 1 and Figure 1: SSIM of gradient-inversion reconstructions per dataset and algorithm.

Usage::

    python -m experiments.table1 --profile smoke
    python -m experiments.table1 --profile paper --datasets cifar10,mnist --out results/paper

Writes ``table1.csv``, ``table1.md``, ``table1.tex``, ``table1.json``, ``figure1.png``
(naive attacker, the paper's) and ``figure1_adaptive.png`` in ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.cli import Outputs, Script
from experiments.figures import figure1
from experiments.tables import TABLE1


def write(o: Outputs) -> list[Path]:
    """Table 1 files and Figure 1 (naive and adaptive attackers)."""
    figures = [figure1(o.cells, o.records, o.out / name, root=o.out, attacker=attacker,
                       images_per_dataset=o.profile.figure_images)
               for name, attacker in (("figure1.png", "naive"), ("figure1_adaptive.png", "adaptive"))]
    return o.write_table(TABLE1, extra_files=[p for p in figures if p is not None])


SCRIPT = Script(name="table1", kinds=("gradinv",), write=write, description=__doc__.split("\n\n")[0])
main = SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())

"""Text of tables: GitHub-flavoured Markdown of pandas frames and the cell formats shared by the run
report and the experiments' tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

#: What a table shows for a value that was not measured.
MISSING = "n/a"


def markdown(frame: pd.DataFrame, header: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of a frame of strings (``header``: the titles, default its columns)."""
    header = [str(h) for h in (frame.columns if header is None else header)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    if not frame.empty:
        lines += ("| " + frame.astype(str).agg(" | ".join, axis=1) + " |").tolist()
    return "\n".join(lines)


def fmt_bytes(value: float | None) -> str:
    """Bytes in MB, kB or B, or :data:`MISSING`."""
    if value is None or math.isnan(value):
        return MISSING
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"

"""GitHub-flavoured Markdown tables of pandas frames (the run report's and the experiments' tables)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def markdown(frame: pd.DataFrame, header: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of a frame of strings (``header``: the titles, default its columns)."""
    header = [str(h) for h in (frame.columns if header is None else header)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    if not frame.empty:
        lines += ("| " + frame.astype(str).agg(" | ".join, axis=1) + " |").tolist()
    return "\n".join(lines)

"""Figure 1 (reconstructions per algorithm, one block per dataset) and the trade-off plot.

Figure 1 is assembled from the PNGs each gradinv run folder holds (the originals and
each attacker's reconstructions, named by :func:`fedtrust.records.gradinv_png` for the
report that writes them and for this module). Cells of one dataset share the seed, so
client P's image i is the same image in every cell.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and saved directly,
so no pyplot state or backend is touched. Colours, markers, legend names and point
tags come from each algorithm's codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.profiles import Algorithm, Cell, dataset_label
from experiments.store import CellRecord
from fedtrust.records import gradinv_png

ImageKey = tuple[int, int, int]  # (round, client, image)


def _load(path: Path | None) -> np.ndarray | None:
    from PIL import Image

    if path is None or not path.is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("L" if img.mode in ("1", "L", "I", "F") else "RGB"))


def image_keys(record: CellRecord, attacker: str) -> list[ImageKey]:
    """``(round, client, image)`` of every reconstruction of ``attacker`` in a gradinv record."""
    images = record.summary.images if record.summary else ()
    return sorted({(im.round, im.client, im.image) for im in images if im.attacker == attacker})


def _ssim_of(record: CellRecord, attacker: str, key: ImageKey) -> float | None:
    images = record.summary.images if record.summary else ()
    return next((float(im.ssim) for im in images
                 if im.attacker == attacker and (im.round, im.client, im.image) == key), None)


def png_path(run_dir: str | Path, key: ImageKey, what: str) -> Path:
    """A run folder's PNG of image ``key``: ``what`` is ``original``, ``naive`` or ``adaptive``
    (named as :func:`fedtrust.records.gradinv_png` names them)."""
    server_round, client, image = key
    return gradinv_png(run_dir, server_round, client, what, image)


@dataclass(frozen=True)
class Panel:
    """One image of Figure 1: its column title, its PNG and the SSIM shown under it."""

    title: str
    png: Path | None
    ssim: float | None = None


def _figure1_rows(cells: Sequence[Cell], records: Mapping[str, CellRecord], root: Path, attacker: str,
                  images_per_dataset: int) -> list[tuple[str, int, ImageKey, list[Panel]]]:
    """``(dataset, j, image key, panels)`` of each row: the original, then each algorithm's reconstruction.

    The images of a dataset are those of its first algorithm with a record (SGD, in the paper's order).
    """
    gcells = [c for c in cells if c.kind == "gradinv"]
    algos = sorted(dict.fromkeys(c.algorithm for c in gcells), key=lambda a: a.sort_key)
    rows = []
    for ds in dict.fromkeys(c.dataset for c in gcells):
        recs = {c.algorithm: records.get(c.key) for c in gcells if c.dataset == ds}
        first = next((recs[a] for a in algos if recs.get(a)), None)
        keys = image_keys(first, attacker)[:images_per_dataset] if first else []
        for j, key in enumerate(keys):
            panels = [Panel("Original", png_path(first.run_path(root), key, "original"))]
            for algo in algos:
                rec = recs.get(algo)
                panels.append(Panel(algo.label.replace(" (", "\n("),
                                    png_path(rec.run_path(root), key, attacker) if rec else None,
                                    _ssim_of(rec, attacker, key) if rec else None))
            rows.append((ds, j, key, panels))
    return rows


def _draw_panel(ax: Axes, panel: Panel, *, top: bool, ylabel: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    arr = _load(panel.png)
    if arr is not None:
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
    else:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    if top:
        ax.set_title(panel.title, fontsize=7)
    if panel.ssim is not None:
        ax.set_xlabel(f"SSIM {panel.ssim:.2f}", fontsize=6, labelpad=1)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=7)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def figure1(cells: Sequence[Cell], records: Mapping[str, CellRecord], path: Path, *, root: Path,
            attacker: str = "naive", images_per_dataset: int = 3) -> Path | None:
    """Originals and reconstructions: a block of rows per dataset, a column per algorithm.

    ``root`` is the sweep folder the records' run folders are relative to. Returns
    ``None`` when no gradinv cell has a record.
    """
    rows = _figure1_rows(cells, records, root, attacker, images_per_dataset)
    if not rows:
        return None
    ncols = len(rows[0][3])
    fig = Figure(figsize=(max(1.25 * ncols + 0.8, 4.0), 1.45 * len(rows) + 0.9))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for i, (ds, j, key, panels) in enumerate(rows):
        for col, panel in enumerate(panels):
            label = f"{dataset_label(ds)}\n" if j == 0 else ""
            _draw_panel(axes[i][col], panel, top=i == 0, ylabel=f"{label}client {key[1]}" if col == 0 else None)
    who = "naive attacker (the paper's)" if attacker == "naive" else "adaptive attacker"
    fig.suptitle(f"Reconstructions, {who}", fontsize=8)
    return _save(fig, path)


def _plot_algorithm(ax: Axes, row: pd.Series, seen: set[tuple[str, str]]) -> None:
    """One algorithm's markers (filled: naive attacker; hollow: adaptive), joined, and its tag."""
    algo = Algorithm(row["family"], int(row["level"]))
    color, marker = algo.codec.style
    x = row["uplink_bytes_per_client_round"]
    ys = {a: None if pd.isna(row[f"ssim_{a}"]) else row[f"ssim_{a}"] for a in ("naive", "adaptive")}
    for attacker, fill in (("naive", color), ("adaptive", "none")):
        if ys[attacker] is None:
            continue
        name = (algo.codec.display, attacker)
        ax.scatter([x], [ys[attacker]], marker=marker, s=55, facecolors=fill, edgecolors=color, zorder=3,
                   label=f"{name[0]} ({attacker})" if name not in seen else None)
        seen.add(name)
    if None not in ys.values():
        ax.plot([x, x], list(ys.values()), color=color, lw=0.6, alpha=0.5, zorder=2)
    y0 = ys["naive"] if ys["naive"] is not None else ys["adaptive"]
    if y0 is not None:
        ax.annotate(algo.tag, (x, y0), textcoords="offset points", xytext=(5, -3), fontsize=7, color=color)


def tradeoff_plot(rows: pd.DataFrame, path: Path) -> Path | None:
    """SSIM against uplink bytes per client and round (log x): one marker per algorithm and level.

    Filled markers: naive attacker; hollow: adaptive attacker; one panel per dataset.
    """
    rows = rows[rows["uplink_bytes_per_client_round"].fillna(0) > 0]
    datasets = list(dict.fromkeys(rows["dataset"]))
    if not datasets:
        return None
    fig = Figure(figsize=(5.2 * len(datasets), 4.2))
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        seen: set[tuple[str, str]] = set()
        for _, row in rows[rows["dataset"] == ds].iterrows():
            _plot_algorithm(ax, row, seen)
        ax.set_xscale("log")
        ax.set_xlabel("uplink bytes per client per round (log)")
        ax.set_ylabel("SSIM of reconstructions (privacy leak)")
        ax.set_title(dataset_label(ds), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Privacy leak against communication (r = PowerSGD rank, L = Top-K level)", fontsize=10)
    return _save(fig, path)

"""Figure 1 (reconstructions per algorithm, one block per dataset) and the trade-off plot.

Figure 1 is assembled from the PNGs each gradinv run folder holds
(``gradinv/round{R}_client{P}_original_{i}.png`` and ``..._{attacker}_{i}.png``,
written by :class:`fedtrust.attacks.gradinv.report.GradInvReport`). Cells of one
dataset share the seed, so client P's image i is the same image in every cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.profiles import Algorithm, Cell, dataset_label

FAMILY_STYLE = {"sgd": ("black", "o"), "powersgd": ("tab:blue", "s"), "topk": ("tab:orange", "^")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load(path: Path) -> np.ndarray | None:
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("L" if img.mode in ("1", "L", "I", "F") else "RGB"))


def image_keys(record: Mapping[str, Any], attacker: str) -> list[tuple[int, int, int]]:
    """``(round, client, image)`` of every reconstruction of ``attacker`` in a gradinv record."""
    images = record.get("summary", {}).get("gradinv", {}).get("images", [])
    return sorted({(im["round"], im["client"], im["image"]) for im in images if im["attacker"] == attacker})


def _ssim_of(record: Mapping[str, Any], attacker: str, key: tuple[int, int, int]) -> float | None:
    for im in record.get("summary", {}).get("gradinv", {}).get("images", []):
        if im["attacker"] == attacker and (im["round"], im["client"], im["image"]) == key:
            return float(im["ssim"])
    return None


def png_path(run_dir: str | Path, key: tuple[int, int, int], what: str) -> Path:
    """A run folder's PNG of image ``key``: ``what`` is ``original``, ``naive`` or ``adaptive``."""
    r, c, i = key
    return Path(run_dir) / "gradinv" / f"round{r}_client{c}_{what}_{i}.png"


def figure1(cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]], path: Path, *,
            attacker: str = "naive", images_per_dataset: int = 3) -> Path | None:
    """Originals and reconstructions: a block of rows per dataset, a column per algorithm.

    Returns ``None`` when no gradinv cell has a record.
    """
    gcells = [c for c in cells if c.kind == "gradinv"]
    datasets = list(dict.fromkeys(c.dataset for c in gcells))
    algos: list[Algorithm] = sorted(dict.fromkeys(c.algorithm for c in gcells), key=lambda a: a.sort_key)
    blocks = []
    for ds in datasets:
        recs = {c.algorithm: records.get(c.key) for c in gcells if c.dataset == ds}
        present = [r for r in recs.values() if r]
        if not present:
            continue
        first = recs.get(Algorithm("sgd")) or present[0]
        keys = image_keys(first, attacker)[:images_per_dataset]
        if keys:
            blocks.append((ds, recs, first, keys))
    if not blocks:
        return None
    plt = _pyplot()
    nrows = sum(len(b[3]) for b in blocks)
    ncols = 1 + len(algos)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(max(1.25 * ncols + 0.8, 4.0), 1.45 * nrows + 0.9))
    row = 0
    for ds, recs, first, keys in blocks:
        for j, key in enumerate(keys):
            panels = [("Original", png_path(first["run_dir"], key, "original"), None)]
            for algo in algos:
                rec = recs.get(algo)
                panels.append((algo.label.replace(" (", "\n("), png_path(rec["run_dir"], key, attacker) if rec else None,
                               _ssim_of(rec, attacker, key) if rec else None))
            for col, (title, png, ssim) in enumerate(panels):
                ax = axes[row][col]
                ax.set_xticks([])
                ax.set_yticks([])
                arr = _load(png) if png is not None else None
                if arr is not None:
                    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
                else:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                if row == 0:
                    ax.set_title(title, fontsize=7)
                if ssim is not None:
                    ax.set_xlabel(f"SSIM {ssim:.2f}", fontsize=6, labelpad=1)
                if col == 0:
                    label = f"{dataset_label(ds)}\n" if j == 0 else ""
                    ax.set_ylabel(f"{label}client {key[1]}", fontsize=7)
            row += 1
    who = "naive attacker (the paper's)" if attacker == "naive" else "adaptive attacker"
    fig.suptitle(f"Reconstructions, {who}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def tradeoff_plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """SSIM against uplink bytes per client and round (log x): one marker per algorithm and level.

    Filled markers: naive attacker; hollow: adaptive attacker; one panel per dataset.
    """
    rows = [r for r in rows if r.get("uplink_bytes_per_client_round")]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    if not datasets:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, figsize=(5.2 * len(datasets), 4.2))
    for ax, ds in zip(axes[0], datasets):
        seen = set()
        for r in (x for x in rows if x["dataset"] == ds):
            color, marker = FAMILY_STYLE[r["family"]]
            x = r["uplink_bytes_per_client_round"]
            name = {"sgd": "SGD", "powersgd": "PowerSGD", "topk": "Top-K"}[r["family"]]
            for attacker, fill in (("naive", color), ("adaptive", "none")):
                y = r.get(f"ssim_{attacker}")
                if y is None:
                    continue
                label = f"{name} ({attacker})" if (name, attacker) not in seen else None
                seen.add((name, attacker))
                ax.scatter([x], [y], marker=marker, s=55, facecolors=fill, edgecolors=color, label=label,
                           zorder=3)
            ys = [r.get("ssim_naive"), r.get("ssim_adaptive")]
            if all(v is not None for v in ys):
                ax.plot([x, x], ys, color=color, lw=0.6, alpha=0.5, zorder=2)
            tag = "SGD" if r["family"] == "sgd" else f"{'r' if r['family'] == 'powersgd' else 'L'}{r['level']}"
            y0 = r.get("ssim_naive") if r.get("ssim_naive") is not None else r.get("ssim_adaptive")
            if y0 is not None:
                ax.annotate(tag, (x, y0), textcoords="offset points", xytext=(5, -3), fontsize=7, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("uplink bytes per client per round (log)")
        ax.set_ylabel("SSIM of reconstructions (privacy leak)")
        ax.set_title(dataset_label(ds), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Privacy leak against communication (r = PowerSGD rank, L = Top-K level)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path

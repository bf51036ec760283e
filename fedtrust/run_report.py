"""A run's one-page report: ``report.md`` and ``report.png`` in its run folder.

What a run showed, on one page: the setting (model, data, algorithm, clients, rounds),
the model's test accuracy and each client's uplink bytes per round, each attacker's
reconstruction of the attacked images with its SSIM, and the membership attacks'
balanced accuracy and AUC. ``report.png`` holds the originals above each attacker's
reconstructions (SSIM in the titles) and the accuracy and uplink bytes per round.

It is built only from the files the run wrote (``config.json``, ``rounds.csv``,
``gradinv.csv`` with its PNGs, ``mia.csv``), so it can be rebuilt for any run folder,
offline::

    python -m fedtrust.run_report ~/fedtrust-runs/<run>

Nothing here is measured anew: every number is a row of those files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from fedtrust.compression.registry import codec_class
from fedtrust.markdown import fmt_bytes, markdown
from fedtrust.records import (
    AGGREGATE,
    GRADINV_CSV,
    MIA_CSV,
    GradInvRow,
    MIARow,
    RoundRow,
    RunFolder,
    csv_columns,
    gradinv_png,
    read_rows,
)

REPORT_MD = "report.md"
REPORT_PNG = "report.png"
#: Attackers in the order the figure's rows show them.
ATTACKER_ORDER = ("naive", "adaptive")
#: Rows of the report's training table before it shows evenly spaced rounds only.
MAX_ROUND_ROWS = 12


def _rows(path: Path, row_type: type) -> pd.DataFrame:
    """A results CSV as a frame (no rows when the run did not write it)."""
    rows = read_rows(path, row_type) if path.exists() else []
    return pd.DataFrame([asdict(r) for r in rows], columns=list(csv_columns(row_type)))


def rounds_frame(folder: RunFolder) -> pd.DataFrame:
    """Per round: test accuracy, accepted clients and the mean uplink bytes a client sent."""
    rounds = _rows(folder.rounds_csv, RoundRow)
    if rounds.empty:
        return pd.DataFrame(columns=["round", "test_accuracy", "clients", "client_uplink_bytes", "compression"])
    clients = rounds["clients"].clip(lower=1)
    return rounds.assign(client_uplink_bytes=rounds["uplink_bytes"] / clients,
                         compression=rounds["dense_bytes"] / rounds["uplink_bytes"].clip(lower=1))


def shown_rounds(rounds: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """At most about ``max_rows`` rounds for the report's table: evenly spaced ones from the first,
    the last, and every round in which a client was refused or failed (never hidden)."""
    if len(rounds) <= max_rows:
        return rounds
    step = -(-len(rounds) // (max_rows - 1))
    position = pd.Series(range(len(rounds)), index=rounds.index)
    keep = (position % step == 0) | (position == len(rounds) - 1) | (rounds["rejected"] > 0) | (rounds["failed"] > 0)
    return rounds[keep]


def _setting(folder: RunFolder) -> str:
    cfg = folder.read_config()
    algo = codec_class(cfg["compressor"]).label(int(cfg["level"]))
    attack = (cfg["attack"] if cfg["attack"] == "none" else
              f"{cfg['attack']} (round {cfg['attack-round']}, {cfg['attack-iterations']} iterations)")
    return (f"{cfg['model']} on `{cfg['dataset']}`, {cfg['local-mode']}, algorithm: {algo}; "
            f"{cfg['num-server-rounds']} rounds, seed {cfg['seed']}; attack: {attack}, membership inference: "
            f"{'on' if cfg['mia'] else 'off'}")


def report_markdown(folder: RunFolder) -> str:
    """The text of ``report.md``."""
    rounds = rounds_frame(folder)
    gradinv = _rows(folder.path / GRADINV_CSV, GradInvRow)
    mia = _rows(folder.path / MIA_CSV, MIARow)
    parts = [f"# fedtrust run {folder.path.name}", "", _setting(folder), "", f"![report]({REPORT_PNG})", ""]
    parts += ["## Training", ""]
    if rounds.empty:
        parts.append("No round finished.")
    else:
        picked = shown_rounds(rounds, MAX_ROUND_ROWS)
        shown = pd.DataFrame({
            "round": picked["round"].astype(int).astype(str),
            "test accuracy": picked["test_accuracy"].map(lambda a: "-" if pd.isna(a) else f"{a:.3f}"),
            "clients": picked["clients"].astype(int).astype(str),
            "refused": picked["rejected"].astype(int).astype(str),
            "failed": picked["failed"].astype(int).astype(str),
            "uplink per client": picked["client_uplink_bytes"].map(fmt_bytes),
            "dense / sent": picked["compression"].map(lambda c: f"{c:,.1f}x")})
        parts.append(markdown(shown))
        if len(picked) < len(rounds):
            parts += ["", f"{len(picked)} of {len(rounds)} rounds shown (evenly spaced, the last, and every round "
                          "with a refused or failed client); `rounds.csv` has them all."]
        parts += ["", "Uplink: the bytes of the arrays each accepted client sent, as the server measured them "
                      "(`rounds.csv`: `uplink_bytes` / `clients`). Refused: updates the robust aggregation "
                      "turned away (see README, \"Robustness\")."]
    parts += ["", "## Gradient inversion", ""]
    if gradinv.empty:
        parts.append("No update was attacked (`attack = \"none\"`).")
    else:
        table = (gradinv.groupby(["round", "client", "image", "attacker"], sort=False)
                 .agg(ssim=("ssim", "mean"), psnr=("psnr", "mean")).reset_index())
        shown = table.assign(**{c: table[c].astype(str) for c in ("round", "client", "image")},
                             ssim=table["ssim"].map("{:.3f}".format), psnr=table["psnr"].map("{:.1f}".format))
        parts.append(markdown(shown, ["round", "client", "image", "attacker", "SSIM", "PSNR (dB)"]))
        means = gradinv.groupby("attacker", sort=False)["ssim"].mean()
        parts += ["", "Mean SSIM: " + ", ".join(f"{a} {m:.3f}" for a, m in means.items())
                  + " (1 is a perfect copy of the client's image; the naive attacker matches the decoded update, "
                    "the adaptive one what the client actually sent)."]
    parts += ["", "## Membership inference", ""]
    if mia.empty:
        parts.append("Not run (`mia = false`).")
    else:
        shown = pd.DataFrame({
            "attack": mia["attack"], "scope": mia["scope"],
            "on": mia["client"].map(lambda c: "final model" if pd.isna(c) else "the round's aggregate"
                                    if int(c) == AGGREGATE else f"client {int(c)}'s update"),
            "balanced accuracy": mia["accuracy"].map("{:.3f}".format), "AUC": mia["auc"].map("{:.3f}".format),
            "members / non-members": mia["members"].astype(str) + " / " + mia["nonmembers"].astype(str)})
        parts.append(markdown(shown))
        target = mia["client"].map(lambda c: "the final model" if pd.isna(c) else "an intercepted update")
        best = mia.assign(target=target).sort_values("auc", ascending=False).groupby("target", sort=False).head(1)
        parts += ["", "Strongest attack " + "; ".join(f"on {row.target}: {row.attack} ({row.scope}), AUC {row.auc:.3f}"
                                                  for row in best.itertuples()) + ".",
                  "0.5 is chance; `mia.csv` has the TPR at low false-positive rates."]
    parts += ["", f"Files: `rounds.csv`, `{GRADINV_CSV}`, `{MIA_CSV}`, `config.json` (every setting and "
                  "package version), `intercepted/` (what the server saw)."]
    return "\n".join(parts) + "\n"


def _image(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def report_figure(folder: RunFolder, path: Path, max_images: int = 6) -> Path:
    """``report.png``: originals and reconstructions (with SSIM) above accuracy and uplink per round."""
    gradinv = _rows(folder.path / GRADINV_CSV, GradInvRow)
    rounds = rounds_frame(folder)
    images = gradinv[["round", "client", "image"]].drop_duplicates().head(max_images)
    attackers = [a for a in ATTACKER_ORDER if a in set(gradinv["attacker"])]
    panels = [(r, client, i, what) for r, client, i in images.itertuples(index=False)
              for what in ("original", *attackers)]
    per_row = max(len(panels[: 3 * (1 + len(attackers))]), 2)
    image_rows = -(-len(panels) // per_row)
    fig = Figure(figsize=(max(1.6 * per_row, 7.0), 1.9 * image_rows + 2.8))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(image_rows + 1, per_row, height_ratios=[1.0] * image_rows + [1.5])
    for n, (r, client, i, what) in enumerate(panels):
        ax = fig.add_subplot(grid[n // per_row, n % per_row])
        ax.axis("off")
        picture = _image(gradinv_png(folder.path, r, client, what, i))
        if picture is not None:
            ax.imshow(picture)
        if what == "original":
            ax.set_title(f"round {r}, client {client}\nimage {i}", fontsize=7)
        else:
            hit = gradinv[(gradinv["round"] == r) & (gradinv["client"] == client) & (gradinv["image"] == i)
                          & (gradinv["attacker"] == what)]
            ax.set_title(f"{what}\nSSIM {hit['ssim'].mean():.2f}", fontsize=7)
    accuracy = fig.add_subplot(grid[image_rows, : per_row // 2])
    uplink = fig.add_subplot(grid[image_rows, per_row // 2:])
    if not rounds.empty:
        accuracy.plot(rounds["round"], rounds["test_accuracy"], marker="o" if len(rounds) <= 20 else None)
        uplink.plot(rounds["round"], rounds["client_uplink_bytes"] / 1e3, label="sent")
        uplink.plot(rounds["round"], rounds["dense_bytes"] / rounds["clients"].clip(lower=1) / 1e3, ls="--",
                    label="uncompressed")
        uplink.set_yscale("log")
        uplink.legend(fontsize=7)
        for ax in (accuracy, uplink):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy.set(xlabel="round", ylabel="test accuracy", title="Global model", ylim=(0.0, 1.0))
    uplink.set(xlabel="round", ylabel="kB per client", title="Uplink")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(folder: RunFolder | str | Path) -> Path:
    """Write ``report.md`` and ``report.png`` into the run folder; return the Markdown file's path."""
    folder = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder).expanduser())
    report_figure(folder, folder.path / REPORT_PNG)
    out = folder.path / REPORT_MD
    out.write_text(report_markdown(folder))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedtrust.run_report", description=__doc__.split("\n")[0])
    parser.add_argument("run_folder", type=Path)
    args = parser.parse_args(argv)
    if not (args.run_folder / "config.json").exists():
        parser.error(f"{args.run_folder} is not a run folder (no config.json)")
    print(write_report(args.run_folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


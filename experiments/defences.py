"""Table 3: compression against real defences, each attacked by the naive and the adaptive attacker.

Usage::

    python -m experiments.defences --profile smoke

Rows, per data set (the *methods*): SGD; PowerSGD and Top-K at the profile's first and
last level; QSGD (4 bits); EF-signSGD; random-K at the first level; and client-level
differential privacy (clip :data:`DP_CLIP`, two noise multipliers :data:`DP_NOISE`)
without compression and with the first compressed algorithm (PowerSGD at the first level). Each method is three cells of
the profile (``gradinv``: SSIM of both attackers; ``mia``: FedAvg's test accuracy, the
black-box loss attack and epsilon; ``update``: the update attack), run and stored like
the other scripts' cells (resumable; shared with them where the settings are the same).
Writes ``defences.csv``, ``.md``, ``.tex``, ``.json`` and ``defences.png`` (adaptive
SSIM against uplink bytes, one marker per method) in ``--out``.

``--algorithms`` replaces the compressors (the DP rows are kept for ``sgd`` and the
first compressed algorithm among them, PowerSGD's first level by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments.cli import Outputs, Script
from experiments.plan import make_cell
from experiments.profiles import Algorithm, Cell, Profile, codec_families, dataset_label
from experiments.runconfig import Override
from experiments.store import CellRecord
from experiments.summaries import AttackScore, ImageScore
from experiments.tables import (
    Table,
    final_results,
    latex,
    score_frame,
    ssim_stats,
    update_means,
)
from fedtrust.compression import get_codec, spec_from_run_config
from fedtrust.markdown import MISSING, fmt_bytes, markdown

#: The clip of every DP row: an update's L2 norm is cut to this.
DP_CLIP = 1.0
#: The two noise multipliers of the DP rows (noise std = multiplier x clip per coordinate).
DP_NOISE = (0.001, 0.01)
#: QSGD's bits per magnitude level in the table (15 levels).
QSGD_BITS = 4
#: The update attack the table reports (the strongest of Table 2's; see README "Membership inference").
UPDATE_ATTACK = "update_regression"
KINDS = ("gradinv", "mia", "update")


@dataclass(frozen=True)
class Method:
    """One row: an algorithm, with or without client-level DP."""

    algorithm: Algorithm
    dp_noise: float = 0.0

    @property
    def key(self) -> str:
        return self.algorithm.key + (f"+dp{self.dp_noise:g}" if self.dp_noise else "")

    @property
    def label(self) -> str:
        return self.algorithm.label + (f" + DP (z={self.dp_noise:g})" if self.dp_noise else "")

    def overrides(self) -> list[Override]:
        if not self.dp_noise:
            return []
        return [Override("dp-clip", DP_CLIP), Override("dp-noise-multiplier", self.dp_noise)]

    @classmethod
    def of(cls, cell: Cell) -> Method:
        """The method a cell measures (from its run config)."""
        dp = float(cell.run_config.get("dp-clip", 0.0)) > 0
        return cls(cell.algorithm, float(cell.run_config["dp-noise-multiplier"]) if dp else 0.0)


def methods(profile: Profile, algorithms: Sequence[Algorithm] | None) -> list[Method]:
    """The rows: the compressors (default: see the module docstring), then the DP rows."""
    if algorithms is None:
        first, last = profile.levels[0], profile.levels[-1]
        algorithms = [Algorithm("sgd"), *(Algorithm(f, lv) for lv in dict.fromkeys((first, last))
                                          for f in ("powersgd", "topk")),
                      Algorithm("qsgd", QSGD_BITS), Algorithm("signsgd"), Algorithm("randomk", first)]
    plain = [Method(a) for a in algorithms]
    compressed = [a for a in algorithms if not a.baseline]
    private = [a for a in algorithms if a.baseline] + compressed[:1]
    return plain + [Method(a, z) for a in private for z in DP_NOISE]


def plan(profile: Profile, kinds: Sequence[str], datasets: Sequence[str], algorithms: Sequence[Algorithm] | None,
         overrides: Iterable[Override] = (), defaults: Mapping[str, Any] | None = None) -> list[Cell]:
    """Every method's cells of ``kinds`` per dataset, in table order."""
    overrides = list(overrides)
    return [make_cell(kind, ds, m.algorithm, profile, [*overrides, *m.overrides()], defaults)
            for ds in datasets for m in methods(profile, algorithms) for kind in kinds]


def _secure_aggregation(cell: Cell) -> str:
    """Whether the cell's compressor works with secure aggregation (its codec says; the protocol
    decides, not the model, so no layout is needed)."""
    return "yes" if get_codec(spec_from_run_config(cell.run_config), ()).summable else "no"


def defences_frame(cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pd.DataFrame:
    """One row per dataset and method: accuracy, traffic, both attackers' SSIM, the MIA AUCs, epsilon."""
    images = ssim_stats(score_frame([c for c in cells if c.kind == "gradinv"], records, ImageScore))
    attacks = score_frame([c for c in cells if c.kind != "gradinv"], records, AttackScore)
    blackbox = final_results(attacks) if not attacks.empty else attacks
    updates = update_means(attacks) if not attacks.empty else attacks
    order: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in cells:
        method = Method.of(cell)
        row = order.setdefault((cell.dataset, method.key), {
            "dataset": cell.dataset, "method": method.key, "label": method.label,
            "family": cell.algorithm.family, "level": cell.algorithm.level, "dp_noise": method.dp_noise,
            "dp_clip": DP_CLIP if method.dp_noise else 0.0, "secure_aggregation": _secure_aggregation(cell),
            "seed": cell.seed})
        record = records.get(cell.key)
        row[f"{cell.kind}_cell"] = cell.key
        summary = record.summary if record else None
        if cell.kind == "gradinv":
            for attacker in ("naive", "adaptive"):
                hit = images[(images["cell"] == cell.key) & (images["attacker"] == attacker)] \
                    if not images.empty else images
                for what in ("mean", "low", "high"):
                    row[f"ssim_{attacker}" + ("" if what == "mean" else f"_{what}")] = (
                        float(hit[f"ssim_{what}"].iloc[0]) if len(hit) else None)
                if attacker == "naive":
                    row["n_images"] = int(hit["n"].iloc[0]) if len(hit) else None
            if summary and "uplink_bytes_per_client_round" not in row:
                row["uplink_bytes_per_client_round"] = summary.rounds.uplink_bytes_per_client_round
                row["dense_bytes_per_client_round"] = summary.rounds.dense_bytes_per_client_round
        elif cell.kind == "mia":
            if summary:
                row.update(test_accuracy=summary.rounds.test_accuracy, rounds=summary.rounds.rounds,
                           epsilon=summary.rounds.epsilon,
                           uplink_bytes_per_client_round=summary.rounds.uplink_bytes_per_client_round,
                           dense_bytes_per_client_round=summary.rounds.dense_bytes_per_client_round)
            loss = blackbox[(blackbox["cell"] == cell.key) & (blackbox["attack"] == "loss")
                            & (blackbox["scope"] == "global")] if not blackbox.empty else blackbox
            row["mia_auc_loss"] = float(loss["auc"].iloc[0]) if len(loss) else None
        elif cell.kind == "update":
            hit = updates[(updates["cell"] == cell.key) & (updates["attack"] == UPDATE_ATTACK)] \
                if not updates.empty else updates
            row["update_auc"] = float(hit["auc"].iloc[0]) if len(hit) else None
            row["update_n"] = int(hit["n"].iloc[0]) if len(hit) else None
        row.setdefault("status", "ok")
        if record is None:
            row["status"] = "missing"
    frame = pd.DataFrame(list(order.values()))
    uplink = frame.get("uplink_bytes_per_client_round", pd.Series(np.nan, index=frame.index)).astype(float)
    dense = frame.get("dense_bytes_per_client_round", pd.Series(np.nan, index=frame.index)).astype(float)
    frame["compression"] = (dense / uplink).where(uplink.gt(0))
    return frame.reindex(columns=list(DEFENCES_COLUMNS))


DEFENCES_COLUMNS = ("dataset", "method", "label", "family", "level", "dp_clip", "dp_noise", "secure_aggregation",
                    "test_accuracy", "rounds", "uplink_bytes_per_client_round", "dense_bytes_per_client_round",
                    "compression", "ssim_naive", "ssim_naive_low", "ssim_naive_high", "ssim_adaptive",
                    "ssim_adaptive_low", "ssim_adaptive_high", "n_images", "mia_auc_loss", "update_auc", "update_n",
                    "epsilon", "seed", "gradinv_cell", "mia_cell", "update_cell", "status")


def _num(value: Any, digits: int) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(low: Any, high: Any) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return MISSING
    return f"[{low:.3f}, {high:.3f}]"


def _epsilon(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return "inf" if math.isinf(value) else f"{value:.3g}"


def defences_shown(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 3 as shown."""
    first = rows["dataset"].ne(rows["dataset"].shift())
    return pd.DataFrame({
        "Dataset": rows["dataset"].map(dataset_label).where(first, ""),
        "Method": rows["label"],
        "SecAgg": rows["secure_aggregation"],
        "Test acc.": rows["test_accuracy"].map(lambda v: _num(None if pd.isna(v) else 100 * v, 1)),
        "Uplink / client / round": rows["uplink_bytes_per_client_round"].astype(float).map(fmt_bytes),
        "Compression": rows["compression"].astype(float).map(lambda v: MISSING if math.isnan(v) else f"{v:.1f}x"),
        "SSIM naive": [f"{_num(m, 3)} {_ci(lo, hi)}" for m, lo, hi in
                       zip(rows["ssim_naive"], rows["ssim_naive_low"], rows["ssim_naive_high"])],
        "SSIM adaptive": [f"{_num(m, 3)} {_ci(lo, hi)}" for m, lo, hi in
                          zip(rows["ssim_adaptive"], rows["ssim_adaptive_low"], rows["ssim_adaptive_high"])],
        "MIA AUC (loss)": rows["mia_auc_loss"].map(lambda v: _num(None if pd.isna(v) else v, 3)),
        "MIA AUC (update)": rows["update_auc"].map(lambda v: _num(None if pd.isna(v) else v, 3)),
        "epsilon": rows["epsilon"].map(lambda v: "-" if pd.isna(v) else _epsilon(float(v)))})


DEFENCES_CAPTION = (
    "Table 3: compression against defences. Test acc. = the FedAvg model after the profile's training (mia "
    "cells); uplink = bytes one client sends in one round, as the server measured the arrays (packed bits "
    "for QSGD and signSGD); compression = dense float32 bytes / uplink; SSIM = mean over the reconstructed "
    "round-1 images (gradinv cells, one image per client) with its 95% percentile-bootstrap interval; MIA "
    "AUC (loss) = the black-box loss attack on the final model, global threshold; MIA AUC (update) = "
    f"{UPDATE_ATTACK} on the intercepted round-1 FedSGD updates (update cells), mean over the updates; "
    f"epsilon = client-level DP (clip {DP_CLIP:g}, noise z x clip, Opacus RDP at dp-delta) after the mia "
    "cell's rounds; SecAgg = whether the compressor works with secure aggregation (observe='aggregate'; "
    "README \"Defences\"). '-' = no DP.")


def defences_notes(rows: pd.DataFrame) -> list[str]:
    """What the sample cannot show."""
    n = rows["n_images"].dropna()
    size = int(n.min()) if len(n) else 0
    return [f"With {size} reconstructed images per row, intervals are wide and differences under a few tenths "
            "of SSIM are not resolved; one seed, one model."]


DEFENCES = Table("defences", DEFENCES_COLUMNS, defences_frame, lambda rows: markdown(defences_shown(rows)),
                 lambda rows: latex(defences_shown(rows)), DEFENCES_CAPTION, defences_notes)


def defences_plot(rows: pd.DataFrame, path: Path) -> Path | None:
    """Adaptive SSIM against uplink bytes per client and round (log x), one marker per method
    (hollow and labelled with its z: with client-level DP)."""
    shown = rows.dropna(subset=["ssim_adaptive", "uplink_bytes_per_client_round"])
    if shown.empty:
        return None
    datasets = list(dict.fromkeys(shown["dataset"]))
    fig = Figure(figsize=(6.0 * len(datasets), 4.6))
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        for row in shown[shown["dataset"] == dataset].itertuples():
            colour, marker = codec_families()[row.family].style
            filled = row.dp_noise == 0
            ax.scatter(row.uplink_bytes_per_client_round, row.ssim_adaptive, c=colour if filled else "none",
                       edgecolors=colour, marker=marker, s=70 if filled else 110, label=row.label)
            if not filled:
                ax.annotate(f"z={row.dp_noise:g}", (row.uplink_bytes_per_client_round, row.ssim_adaptive),
                            textcoords="offset points", xytext=(8, -3), fontsize=7, color=colour)
            ax.errorbar(row.uplink_bytes_per_client_round, row.ssim_adaptive, fmt="none", ecolor=colour,
                        yerr=[[row.ssim_adaptive - row.ssim_adaptive_low], [row.ssim_adaptive_high - row.ssim_adaptive]],
                        alpha=0.5)
        ax.set(xscale="log", xlabel="uplink bytes per client per round", ylabel="SSIM (adaptive attacker)",
               title=dataset_label(dataset), ylim=(-0.05, 1.05))
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write(o: Outputs) -> list[Path]:
    """Table 3's files and its figure."""
    rows = o.rows(DEFENCES)
    plot = defences_plot(rows, o.out / "defences.png")
    return o.write_table(DEFENCES, rows, extra_files=[plot] if plot else [])


SCRIPT = Script(name="defences", kinds=KINDS, write=write, description=__doc__.split("\n\n")[0], plan=plan)
main = SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())

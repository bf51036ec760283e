"""The paper's tables from cell records: numbers (pure functions) and CSV / Markdown / LaTeX files.

Table 1
    SSIM of the gradient-inversion reconstructions per dataset and algorithm: mean,
    standard deviation and percentage of the SGD baseline's mean, for the naive
    attacker (the paper's) and the adaptive one, with the number of images.
Table 2
    Membership inference on the final model: the paper's three attacks' balanced
    accuracy, plus AUC and TPR at 1% / 0.1% FPR (global and per-class thresholds),
    and the update attacks on intercepted FedSGD updates (beyond the paper).
Trade-off
    Test accuracy, uplink bytes, SSIM and MIA AUC per algorithm.

Every table file ends with a footer giving the seed and configuration, and has a
``<name>.json`` sidecar with the command, every cell's full run config and run folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.profiles import Algorithm, Cell, dataset_label

ATTACKERS = ("naive", "adaptive")
#: The paper's three black-box attacks: column label -> fedtrust attack name.
PAPER_MIA = {"Prediction": "confidence", "Loss": "loss", "Cross-Entropy": "modified_entropy"}
#: Update attacks (beyond the paper): column label -> fedtrust attack name.
UPDATE_MIA = {"cosine": "update_cosine", "cosine (aware)": "update_cosine_aware",
              "loss drop": "update_loss_drop", "regression": "update_regression"}
MISSING = "n/a"

MIA_FOOTNOTE = ("Prediction MIA = the true-class softmax confidence (Shokri et al. 2017), Loss MIA = the "
                "cross-entropy loss (Yeom et al. 2018), Cross-Entropy MIA = the modified entropy Mentr of "
                "Song & Mittal (2021), which uses the true label; balanced accuracy of a threshold chosen on a "
                "disjoint calibration half of the candidates (members: train samples the clients trained on; "
                "non-members: held-out test samples).")


# ------------------------------------------------------------------ metadata and footers
@dataclass
class TableMeta:
    """Where a table came from: written in its footer and its JSON sidecar."""

    script: str
    profile: str
    command: str
    generated: str
    commit: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def records_of(cells: Sequence[Cell], records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The finished (``status == "ok"``) records of ``cells``, by key."""
    keys = {c.key for c in cells}
    return {r["key"]: dict(r) for r in records if r.get("key") in keys and r.get("status") == "ok"}


def common_settings(cells: Sequence[Cell], defaults: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per cell kind: the settings all its cells share that differ from the app's defaults."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(c.kind for c in cells):
        group = [c for c in cells if c.kind == kind]
        shared = {}
        for key, value in group[0].run_config.items():
            if key in ("dataset", "compressor", "level"):
                continue
            if all(c.run_config.get(key) == value for c in group) and defaults.get(key) != value:
                shared[key] = value
        supernodes = {c.num_supernodes for c in group}
        shared["num-supernodes"] = supernodes.pop() if len(supernodes) == 1 else sorted(supernodes)
        out[kind] = shared
    return out


def footer(meta: TableMeta, cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]],
           defaults: Mapping[str, Any]) -> list[str]:
    """Footer lines: seed, profile, configuration, command, provenance, missing cells."""
    seeds = sorted({c.seed for c in cells})
    lines = [f"Seed {', '.join(map(str, seeds))}; profile `{meta.profile}`; command `{meta.command}`; "
             f"generated {meta.generated}" + (f" from fedtrust {meta.commit}" if meta.commit else "") + "."]
    for kind, shared in common_settings(cells, defaults).items():
        settings = ", ".join(f"{k}={_value(v)}" for k, v in shared.items())
        lines.append(f"{kind} cells: {settings} (other keys: the app's defaults; full configs in the .json sidecar).")
    missing = [c.name for c in cells if c.key not in records]
    if missing:
        lines.append(f"Missing or failed cells ({len(missing)}), shown as {MISSING}: {', '.join(missing)}.")
    return lines


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) else str(v)


def sidecar(meta: TableMeta, cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]],
            defaults: Mapping[str, Any], path: Path, files: Sequence[Path]) -> Path:
    """Write ``<name>.json``: provenance and every cell's full config, seed and run folder."""
    blob = {
        "script": meta.script, "profile": meta.profile, "description": meta.description,
        "command": meta.command, "generated": meta.generated, "fedtrust_commit": meta.commit,
        "seeds": sorted({c.seed for c in cells}), "files": [str(f) for f in files],
        "common_settings": common_settings(cells, defaults), **meta.extra,
        "cells": [{
            "key": c.key, "name": c.name, "kind": c.kind, "dataset": c.dataset,
            "algorithm": c.algorithm.key, "seed": c.seed, "num_supernodes": c.num_supernodes,
            "status": "ok" if c.key in records else "missing",
            "run_dir": records.get(c.key, {}).get("run_dir"),
            "seconds": records.get(c.key, {}).get("seconds"),
            "computed_by": records.get(c.key, {}).get("script"),
            "run_config": dict(c.run_config),
        } for c in cells],
    }
    path.write_text(json.dumps(blob, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ formatting
def fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or :data:`MISSING`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """A percentage (already x100) with a ``%`` sign, or :data:`MISSING`."""
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}%"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Rows as CSV with the given columns (missing values empty)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def _datasets(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.dataset for c in cells))


def _algorithms(cells: Sequence[Cell]) -> list[Algorithm]:
    return sorted(dict.fromkeys(c.algorithm for c in cells), key=lambda a: a.sort_key)


def _cell(cells: Sequence[Cell], kind: str, dataset: str, algo: Algorithm) -> Cell | None:
    return next((c for c in cells if c.kind == kind and c.dataset == dataset and c.algorithm == algo), None)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# ------------------------------------------------------------------ Table 1
def ssim_stats(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """``(mean, std, n)``; std is the population standard deviation (``ddof=0``)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return None, None, 0
    return float(arr.mean()), float(arr.std(ddof=0)), int(arr.size)


def table1_rows(cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset, attacker and algorithm (paper order) with SSIM mean, std, % of SGD, n."""
    rows = []
    gcells = [c for c in cells if c.kind == "gradinv"]
    for ds in _datasets(gcells):
        for attacker in ATTACKERS:
            block = []
            for algo in _algorithms(gcells):
                cell = _cell(gcells, "gradinv", ds, algo)
                rec = records.get(cell.key) if cell else None
                images = [im for im in (rec or {}).get("summary", {}).get("gradinv", {}).get("images", [])
                          if im["attacker"] == attacker]
                mean, std, n = ssim_stats([im["ssim"] for im in images])
                block.append({
                    "dataset": ds, "dataset_label": dataset_label(ds), "attacker": attacker,
                    "algorithm": algo.key, "family": algo.family, "level": algo.level, "label": algo.label,
                    "ssim_mean": mean, "ssim_std": std, "n": n,
                    "psnr_mean": _mean([im["psnr"] for im in images]),
                    "seed": cell.seed if cell else None, "cell": cell.key if cell else None,
                    "run_dir": (rec or {}).get("run_dir"), "status": "ok" if rec else "missing",
                })
            base = next((r["ssim_mean"] for r in block if r["family"] == "sgd"), None)
            for r in block:
                r["pct_of_sgd"] = (100.0 * r["ssim_mean"] / base
                                   if r["ssim_mean"] is not None and base not in (None, 0.0) else None)
            rows += block
    return rows


TABLE1_COLUMNS = ("dataset", "attacker", "algorithm", "family", "level", "label", "ssim_mean", "ssim_std",
                  "pct_of_sgd", "n", "psnr_mean", "seed", "cell", "run_dir", "status")


def table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Two blocks (naive, adaptive); rows = algorithms, column groups = datasets."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = {r["dataset"]: r["dataset_label"] for r in rows}
    parts = []
    for attacker in ATTACKERS:
        block = [r for r in rows if r["attacker"] == attacker]
        if not block:
            continue
        header = ["Algorithm"]
        for ds in datasets:
            header += [f"{labels[ds]} Mean", "Std", "% of SGD", "n"]
        body = []
        for label in dict.fromkeys(r["label"] for r in block):
            line = [label]
            for ds in datasets:
                r = next((x for x in block if x["dataset"] == ds and x["label"] == label), None)
                line += ([fmt(r["ssim_mean"]), fmt(r["ssim_std"]), fmt_pct(r["pct_of_sgd"]), str(r["n"])]
                         if r else [MISSING] * 4)
            body.append(line)
        title = ("Naive attacker (matches the decoded update with a dense gradient; the paper's)"
                 if attacker == "naive" else "Adaptive attacker (knows the compressor; matches what was sent)")
        parts.append(f"**{title}**\n\n" + markdown(header, body))
    return "\n\n".join(parts)


def table1_tex(rows: Sequence[Mapping[str, Any]]) -> str:
    """LaTeX (booktabs): a column group per dataset, a block per attacker."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = {r["dataset"]: r["dataset_label"] for r in rows}
    ncol = 1 + 4 * len(datasets)
    lines = [r"\begin{tabular}{l" + "rrrr" * len(datasets) + "}", r"\toprule",
             " & " + " & ".join(rf"\multicolumn{{4}}{{c}}{{{tex_escape(labels[d])}}}" for d in datasets) + r" \\",
             "".join(rf"\cmidrule(lr){{{2 + 4 * i}-{5 + 4 * i}}}" for i in range(len(datasets))),
             "Algorithm & " + " & ".join(["Mean & Std & \\% of SGD & $n$"] * len(datasets)) + r" \\",
             r"\midrule"]
    for attacker in ATTACKERS:
        block = [r for r in rows if r["attacker"] == attacker]
        if not block:
            continue
        lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\emph{{{attacker.capitalize()} attacker}}}} \\")
        for label in dict.fromkeys(r["label"] for r in block):
            cells = [tex_escape(label)]
            for ds in datasets:
                r = next((x for x in block if x["dataset"] == ds and x["label"] == label), None)
                cells += ([fmt(r["ssim_mean"]), fmt(r["ssim_std"]), tex_escape(fmt_pct(r["pct_of_sgd"])), str(r["n"])]
                          if r else [MISSING] * 4)
            lines.append(" & ".join(cells) + r" \\")
        lines.append(r"\midrule" if attacker != ATTACKERS[-1] else r"\bottomrule")
    lines.append(r"\end{tabular}")
    return "\n".join(lines)


TABLE1_CAPTION = ("Table 1: SSIM between each reconstructed image and its original (gradient inversion of "
                  "Geiping et al. 2020 on one-image client updates of round 1). Mean and std (population, "
                  "ddof=0) over the n reconstructed images; % of SGD = mean / Original SGD's mean on the same "
                  "dataset and attacker. Rows in the paper's order; Top-K level r sends as many values as "
                  "PowerSGD rank r (*).")


# ------------------------------------------------------------------ Table 2
def _mia_results(rec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return list((rec or {}).get("summary", {}).get("mia", {}).get("results", []))


def _pick(results: Sequence[Mapping[str, Any]], attack: str, scope: str) -> dict[str, Any] | None:
    """The last (final-round) result of one black-box attack and scope."""
    found = [r for r in results if r["attack"] == attack and r["scope"] == scope]
    return dict(max(found, key=lambda r: r["round"])) if found else None


def _update_mean(results: Sequence[Mapping[str, Any]], attack: str) -> dict[str, Any] | None:
    """Mean metrics of one update attack over every intercepted update."""
    found = [r for r in results if r["attack"] == attack and r["scope"] == "update"]
    if not found:
        return None
    keys = ("accuracy", "auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in found])) for k in keys}
    out["auc_std"] = float(np.std([r["auc"] for r in found]))
    out.update(n=len(found), members=int(np.mean([r["members"] for r in found])),
               nonmembers=int(np.mean([r["nonmembers"] for r in found])))
    return out


def table2_rows(cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Long rows: per dataset, algorithm, source (``blackbox``/``update``), attack and scope."""
    rows = []
    for ds in _datasets(cells):
        for algo in _algorithms(cells):
            mcell = _cell(cells, "mia", ds, algo)
            ucell = _cell(cells, "update", ds, algo)
            mrec = records.get(mcell.key) if mcell else None
            urec = records.get(ucell.key) if ucell else None
            common = {"dataset": ds, "dataset_label": dataset_label(ds), "algorithm": algo.key,
                      "family": algo.family, "level": algo.level, "label": algo.label}
            if mcell is not None:
                acc = (mrec or {}).get("summary", {}).get("rounds", {}).get("test_accuracy")
                for attack in ("confidence", "loss", "entropy", "modified_entropy"):
                    for scope in ("global", "per_class"):
                        r = _pick(_mia_results(mrec), attack, scope)
                        rows.append({**common, "source": "blackbox", "attack": attack, "scope": scope,
                                     **(r or {}), "n": 1 if r else 0, "test_accuracy": acc,
                                     "seed": mcell.seed, "cell": mcell.key,
                                     "run_dir": (mrec or {}).get("run_dir"),
                                     "status": "ok" if r else "missing"})
            if ucell is not None:
                for attack in UPDATE_MIA.values():
                    r = _update_mean(_mia_results(urec), attack)
                    rows.append({**common, "source": "update", "attack": attack, "scope": "update",
                                 **(r or {}), "n": (r or {}).get("n", 0), "seed": ucell.seed, "cell": ucell.key,
                                 "run_dir": (urec or {}).get("run_dir"), "status": "ok" if r else "missing"})
    return rows


TABLE2_COLUMNS = ("dataset", "algorithm", "family", "level", "label", "source", "attack", "scope", "accuracy",
                  "auc", "auc_std", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "members", "nonmembers", "n",
                  "round", "test_accuracy", "seed", "cell", "run_dir", "status")


def _lookup(rows: Sequence[Mapping[str, Any]], ds: str, label: str, source: str, attack: str,
            scope: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["dataset"] == ds and r["label"] == label and r["source"] == source
                 and r["attack"] == attack and r["scope"] == scope and r["status"] == "ok"), None)


def _get(r: Mapping[str, Any] | None, key: str) -> float | None:
    return None if r is None else r.get(key)


def table2_blocks(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, body)`` of each sub-table (paper layout, AUC/TPR, per-class, update attacks)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = {r["dataset"]: r["dataset_label"] for r in rows}
    algos = list(dict.fromkeys(r["label"] for r in rows))
    has = {s: any(r["source"] == s for r in rows) for s in ("blackbox", "update")}
    blocks = []

    def body(make) -> list[list[str]]:
        out = []
        for ds in datasets:
            for i, label in enumerate(algos):
                out.append([labels[ds] if i == 0 else "", label, *make(ds, label)])
        return out

    if has["blackbox"]:
        def paper(ds: str, label: str) -> list[str]:
            res = [_lookup(rows, ds, label, "blackbox", a, "global") for a in PAPER_MIA.values()]
            acc = next((r.get("test_accuracy") for r in rows if r["dataset"] == ds and r["label"] == label
                        and r["source"] == "blackbox"), None)
            return [fmt_pct(None if r is None else 100 * r["accuracy"]) for r in res] + \
                   [fmt_pct(None if acc is None else 100 * acc)]

        blocks.append(("Table 2: membership-inference attack success (balanced accuracy, global threshold)",
                       ["Dataset", "Algorithm", *(f"{k} MIA" for k in PAPER_MIA), "Test acc."], body(paper)))

        def roc(ds: str, label: str) -> list[str]:
            out = []
            for attack in PAPER_MIA.values():
                r = _lookup(rows, ds, label, "blackbox", attack, "global")
                out += [fmt(_get(r, "auc"), 3), fmt_pct(None if r is None else 100 * r["tpr_at_1pct_fpr"]),
                        fmt_pct(None if r is None else 100 * r["tpr_at_0_1pct_fpr"])]
            return out

        blocks.append(("Table 2b: AUC and TPR at 1% / 0.1% FPR (global threshold)",
                       ["Dataset", "Algorithm"] + [f"{k} {m}" for k in PAPER_MIA
                                                   for m in ("AUC", "TPR@1%", "TPR@0.1%")], body(roc)))

        def per_class(ds: str, label: str) -> list[str]:
            res = [_lookup(rows, ds, label, "blackbox", a, "per_class") for a in PAPER_MIA.values()]
            return [fmt_pct(None if r is None else 100 * r["accuracy"]) for r in res] + \
                   [fmt(_get(r, "auc"), 3) for r in res]

        blocks.append(("Table 2c: per-class thresholds (balanced accuracy; AUC)",
                       ["Dataset", "Algorithm", *(f"{k} MIA" for k in PAPER_MIA), *(f"{k} AUC" for k in PAPER_MIA)],
                       body(per_class)))
    if has["update"]:
        def update(ds: str, label: str) -> list[str]:
            res = [_lookup(rows, ds, label, "update", a, "update") for a in UPDATE_MIA.values()]
            n = next((str(r["n"]) for r in res if r is not None), "0")
            return [fmt(_get(r, "auc"), 3) for r in res] + \
                   [fmt_pct(None if res[-1] is None else 100 * res[-1]["tpr_at_1pct_fpr"]), n]

        blocks.append((("Table 2d (beyond the paper): update attacks on intercepted FedSGD updates "
                        "(AUC, mean over the n intercepted client updates)"),
                       ["Dataset", "Algorithm", *(f"{k} AUC" for k in UPDATE_MIA), "regression TPR@1%", "n"],
                       body(update)))
    return blocks


def table2_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(f"**{title}**\n\n" + markdown(header, body) for title, header, body in table2_blocks(rows))


def table2_tex(rows: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for title, header, body in table2_blocks(rows):
        lines = [f"% {title}", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
                 " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(tex_escape(c) for c in line) + r" \\" for line in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def table2_footnotes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The attacks' definitions and the candidate counts (the resolution of TPR at low FPR)."""
    notes = [MIA_FOOTNOTE]
    bb = [r for r in rows if r["source"] == "blackbox" and r["status"] == "ok"]
    if bb:
        non = sorted({int(r["nonmembers"]) for r in bb})
        mem = sorted({int(r["members"]) for r in bb})
        notes.append(f"Evaluation candidates per black-box attack: {'/'.join(map(str, mem))} members and "
                     f"{'/'.join(map(str, non))} non-members; TPR at 0.1% FPR needs >= 1,000 non-members to mean "
                     f"more than 'no false positive at all'.")
    if any(r["source"] == "update" for r in rows):
        notes.append("Update attacks (fedtrust.attacks.mia.update_attack): was a candidate in the client's "
                     "batch? Scored by the cosine of its gradient with the decoded update, the same cosine over "
                     "what was transmitted only (compression-aware), the loss drop of the server's step, and a "
                     "least-squares decomposition of the transmitted update on the candidates' gradients.")
    return notes


# ------------------------------------------------------------------ trade-off
def tradeoff_rows(cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and algorithm: accuracy, uplink bytes, SSIM (naive, adaptive), MIA AUC."""
    t1 = table1_rows(cells, records)
    rows = []
    for ds in _datasets(cells):
        for algo in _algorithms(cells):
            g = _cell(cells, "gradinv", ds, algo)
            m = _cell(cells, "mia", ds, algo)
            grec = records.get(g.key) if g else None
            mrec = records.get(m.key) if m else None
            rounds = (mrec or grec or {}).get("summary", {}).get("rounds", {})
            ssim = {r["attacker"]: r for r in t1 if r["dataset"] == ds and r["algorithm"] == algo.key}
            aucs = {name: _get(_pick(_mia_results(mrec), attack, "global"), "auc")
                    for name, attack in PAPER_MIA.items()}
            uplink = rounds.get("uplink_bytes_per_client_round")
            dense = rounds.get("dense_bytes_per_client_round")
            rows.append({
                "dataset": ds, "dataset_label": dataset_label(ds), "algorithm": algo.key, "family": algo.family,
                "level": algo.level, "label": algo.label,
                "test_accuracy": (mrec or {}).get("summary", {}).get("rounds", {}).get("test_accuracy"),
                "rounds": (mrec or {}).get("summary", {}).get("rounds", {}).get("rounds"),
                "uplink_bytes_per_client_round": uplink, "dense_bytes_per_client_round": dense,
                "compression": (dense / uplink) if uplink and dense else None,
                "ssim_naive": ssim.get("naive", {}).get("ssim_mean"),
                "ssim_adaptive": ssim.get("adaptive", {}).get("ssim_mean"),
                "n_images": ssim.get("naive", {}).get("n"),
                "mia_auc_prediction": aucs["Prediction"], "mia_auc_loss": aucs["Loss"],
                "mia_auc_cross_entropy": aucs["Cross-Entropy"],
                "seed": (g or m).seed if (g or m) else None,
                "gradinv_cell": g.key if g else None, "mia_cell": m.key if m else None,
                "status": "ok" if (grec or not g) and (mrec or not m) else "missing",
            })
    return rows


TRADEOFF_COLUMNS = ("dataset", "algorithm", "family", "level", "label", "test_accuracy", "rounds",
                    "uplink_bytes_per_client_round", "dense_bytes_per_client_round", "compression",
                    "ssim_naive", "ssim_adaptive", "n_images", "mia_auc_prediction", "mia_auc_loss",
                    "mia_auc_cross_entropy", "seed", "gradinv_cell", "mia_cell", "status")


def _bytes(value: float | None) -> str:
    if value is None:
        return MISSING
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def tradeoff_body(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Dataset", "Algorithm", "Test acc.", "Uplink / client / round", "Compression", "SSIM naive",
              "SSIM adaptive", "MIA AUC (loss)"]
    body, last = [], None
    for r in rows:
        body.append([r["dataset_label"] if r["dataset"] != last else "", r["label"],
                     fmt_pct(None if r["test_accuracy"] is None else 100 * r["test_accuracy"]),
                     _bytes(r["uplink_bytes_per_client_round"]),
                     MISSING if r["compression"] is None else f"{r['compression']:.1f}x",
                     fmt(r["ssim_naive"]), fmt(r["ssim_adaptive"]), fmt(r["mia_auc_loss"], 3)])
        last = r["dataset"]
    return header, body


def tradeoff_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header, body = tradeoff_body(rows)
    return "**Privacy-utility-communication trade-off**\n\n" + markdown(header, body)


def tradeoff_tex(rows: Sequence[Mapping[str, Any]]) -> str:
    header, body = tradeoff_body(rows)
    lines = [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


TRADEOFF_CAPTION = ("Test accuracy of the model trained by FedAvg (mia cells, final round); uplink = bytes one "
                    "client sends in one round (both PowerSGD all-reduce exchanges; Top-K values + int32 "
                    "indices), compression = dense float32 bytes / uplink; SSIM = mean over the reconstructed "
                    "images (gradinv cells); MIA AUC = loss attack on the final model, global threshold.")


# ------------------------------------------------------------------ writing a table's files
def write_outputs(out: Path, name: str, *, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                  md_body: str, tex_body: str, caption: str, notes: Sequence[str], meta: TableMeta,
                  cells: Sequence[Cell], records: Mapping[str, Mapping[str, Any]],
                  defaults: Mapping[str, Any], extra_files: Sequence[Path] = ()) -> list[Path]:
    """Write ``<name>.csv``, ``.md``, ``.tex`` and ``.json``.

    The Markdown and LaTeX files end with the footer (seed, configuration, command);
    the CSV has a ``seed`` and a ``cell`` column, and the JSON sidecar every cell's full config.
    """
    foot = footer(meta, cells, records, defaults)
    csv_path = write_csv(out / f"{name}.csv", rows, columns)
    md_path = out / f"{name}.md"
    md_path.write_text(f"{md_body}\n\n{caption}\n\n" + "".join(f"{n}\n\n" for n in notes)
                       + "\n".join(f"_{line}_  " for line in foot) + "\n")
    tex_path = out / f"{name}.tex"
    tex_path.write_text("% " + caption.replace("\n", " ") + "\n" + "".join(f"% {n}\n" for n in notes)
                        + "".join(f"% {line}\n" for line in foot) + tex_body + "\n")
    files = [csv_path, md_path, tex_path, *extra_files]
    json_path = sidecar(meta, cells, records, defaults, out / f"{name}.json", files)
    return [*files, json_path]

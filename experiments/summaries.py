"""What a finished run folder holds, as the small JSON summary a cell record keeps.

Reads ``rounds.csv`` (:mod:`fedtrust.records`), ``gradinv.csv``
(:mod:`fedtrust.attacks.gradinv.report`) and ``mia.csv``
(:mod:`fedtrust.attacks.mia.report`) and keeps every per-image and per-attack number
the tables need, so tables are built from the store alone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Files each cell kind must have produced for its record to be a result.
REQUIRED = {"gradinv": ("rounds.csv", "gradinv.csv"), "mia": ("rounds.csv", "mia.csv"),
            "update": ("rounds.csv", "mia.csv")}


class IncompleteRun(RuntimeError):
    """A run reported success but its folder lacks what its kind must produce."""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str | None) -> float | int | None:
    """A CSV cell as an int, a float, or None when empty."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def rounds_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Final accuracy and loss, and the mean uplink per round and per client per round."""
    if not rows:
        raise IncompleteRun("rounds.csv has no rows")
    parsed = [{k: _num(v) for k, v in r.items()} for r in rows]
    last = parsed[-1]
    clients = [max(int(r["clients"] or 0), 1) for r in parsed]
    per_client = [float(r["uplink_bytes"]) / c for r, c in zip(parsed, clients)]
    dense_per_client = [float(r["dense_bytes"]) / c for r, c in zip(parsed, clients)]
    return {
        "rounds": len(parsed),
        "test_accuracy": float(last["test_accuracy"]),
        "test_loss": float(last["test_loss"]),
        "train_loss": None if last["train_loss"] is None else float(last["train_loss"]),
        "clients_per_round": sum(clients) / len(clients),
        "uplink_bytes_per_round": sum(float(r["uplink_bytes"]) for r in parsed) / len(parsed),
        "uplink_bytes_per_client_round": sum(per_client) / len(per_client),
        "dense_bytes_per_client_round": sum(dense_per_client) / len(dense_per_client),
        "buffer_bytes_per_round": sum(float(r["buffer_bytes"] or 0) for r in parsed) / len(parsed),
        "seconds": sum(float(r["seconds"] or 0) for r in parsed),
        "per_round": [{"round": int(r["round"]), "test_accuracy": r["test_accuracy"],
                       "uplink_bytes": r["uplink_bytes"]} for r in parsed],
    }


def gradinv_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Per reconstructed image: attacker, round, client, image, label, SSIM, PSNR, MSE."""
    images = [{"attacker": r["attacker"], "round": int(r["round"]), "client": int(r["client"]),
               "image": int(r["image"]), "label": int(r["label"]),
               "label_inferred": r["label_inferred"] == "True", "ssim": float(r["ssim"]),
               "psnr": float(r["psnr"]), "mse": float(r["mse"]), "iterations": int(r["iterations"]),
               "seconds": float(r["seconds"])} for r in rows]
    if not images:
        raise IncompleteRun("gradinv.csv has no rows")
    return {"images": images}


def mia_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Every attack result: black-box (``global``/``per_class``) and update attacks (``update``)."""
    results = [{"attack": r["attack"], "scope": r["scope"], "round": int(r["round"]),
                "accuracy": float(r["accuracy"]), "auc": float(r["auc"]),
                "tpr_at_1pct_fpr": float(r["tpr_at_1pct_fpr"]),
                "tpr_at_0_1pct_fpr": float(r["tpr_at_0_1pct_fpr"]),
                "members": int(r["members"]), "nonmembers": int(r["nonmembers"])} for r in rows]
    if not results:
        raise IncompleteRun("mia.csv has no rows")
    return {"results": results}


def summarize_run(folder: str | Path, kind: str) -> dict[str, Any]:
    """The summary of a finished run folder for a cell of ``kind``.

    Raises
    ------
    IncompleteRun
        When a file the kind must produce is missing or empty.
    """
    folder = Path(folder)
    missing = [f for f in REQUIRED[kind] if not (folder / f).is_file()]
    if missing:
        raise IncompleteRun(f"{folder} lacks {', '.join(missing)}")
    out: dict[str, Any] = {"rounds": rounds_summary(_rows(folder / "rounds.csv"))}
    if (folder / "gradinv.csv").is_file():
        out["gradinv"] = gradinv_summary(_rows(folder / "gradinv.csv"))
    if (folder / "mia.csv").is_file():
        out["mia"] = mia_summary(_rows(folder / "mia.csv"))
    config = folder / "config.json"
    if config.is_file():
        blob = json.loads(config.read_text())
        out["app"] = {"run_id": blob.get("run_id"), "started": blob.get("started"),
                      "versions": blob.get("versions"), "num_parameters": blob.get("num_parameters")}
    return out


def check_config(folder: str | Path, expected: Mapping[str, Any]) -> None:
    """Raise ``IncompleteRun`` unless the run folder's ``config.json`` has the expected values."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise IncompleteRun(f"{path} is missing")
    got = json.loads(path.read_text()).get("config", {})
    wrong = {k: (v, got.get(k)) for k, v in expected.items() if k in got and got[k] != v
             and not (isinstance(v, float) and isinstance(got[k], (int, float)) and float(got[k]) == v)}
    if wrong:
        raise IncompleteRun(f"{path}: the run used other settings than the cell: {wrong}")

"""Table 3 (experiments.defences): its rows, its columns and its files, from the cells' records."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from test_experiments import fake_record, mia_result

from experiments import defences
from experiments.profiles import SMOKE, Algorithm
from experiments.store import CellStore
from experiments.summaries import AttackScore


def test_the_rows_are_the_compressors_then_dp_with_and_without_compression():
    keys = [m.key for m in defences.methods(SMOKE, None)]
    assert keys == ["sgd", "powersgd1", "topk1", "powersgd4", "topk4", "qsgd4", "signsgd", "randomk1",
                    "sgd+dp0.001", "sgd+dp0.01", "powersgd1+dp0.001", "powersgd1+dp0.01"]
    cells = defences.plan(SMOKE, defences.KINDS, ["sample"], None)
    assert len(cells) == 36 and len({c.key for c in cells}) == 36
    dp = [c for c in cells if c.run_config["dp-clip"] > 0]
    assert len(dp) == 12 and {c.run_config["dp-noise-multiplier"] for c in dp} == set(defences.DP_NOISE)
    assert {defences.Method.of(c).key for c in cells} == set(keys)
    only = defences.methods(SMOKE, [Algorithm("topk", 1)])
    assert [m.key for m in only] == ["topk1", "topk1+dp0.001", "topk1+dp0.01"]  # DP with the first compressed one


def test_the_table_reads_accuracy_traffic_ssim_mia_and_epsilon_from_the_records(tmp_path):
    cells = defences.plan(SMOKE, defences.KINDS, ["sample"], [Algorithm("sgd"), Algorithm("randomk", 1)])
    store = CellStore(tmp_path)
    for i, cell in enumerate(cells):
        private = cell.run_config["dp-clip"] > 0
        if cell.kind == "gradinv":
            record = fake_record(cell, ssim={"naive": [0.9 - i / 100, 0.8], "adaptive": [0.95, 0.85]}, uplink=400.0)
        elif cell.kind == "mia":
            record = fake_record(cell, accuracy=0.6 - i / 100, mia=[mia_result("loss", "global", 0.55, 0.57)])
            if private:
                rounds = dataclasses.replace(record.summary.rounds, epsilon=123.0)
                record = dataclasses.replace(record, summary=dataclasses.replace(record.summary, rounds=rounds))
        else:
            record = fake_record(cell, mia=[AttackScore(attack="update_regression", scope="update", round=1,
                                                        accuracy=1.0, auc=0.99, tpr_at_1pct_fpr=1.0,
                                                        tpr_at_0_1pct_fpr=1.0, members=8, nonmembers=100)])
        store.add(record)
    records = {c.key: store.get(c.key) for c in cells}
    rows = defences.defences_frame(cells, records)
    assert list(rows["method"]) == ["sgd", "randomk1", "sgd+dp0.001", "sgd+dp0.01", "randomk1+dp0.001",
                                    "randomk1+dp0.01"]
    assert rows["secure_aggregation"].eq("yes").all()
    assert rows["ssim_naive"].iloc[0] == pytest.approx((0.9 + 0.8) / 2) and rows["n_images"].iloc[0] == 2
    assert rows["ssim_adaptive"].iloc[1] == pytest.approx(0.9) and (rows["update_auc"] == 0.99).all()
    assert rows["mia_auc_loss"].iloc[0] == 0.57 and rows["compression"].iloc[0] == pytest.approx(4.0)
    assert rows["epsilon"].isna().tolist() == [True, True, False, False, False, False]
    assert rows["epsilon"].iloc[2] == 123.0
    shown = defences.defences_shown(rows)
    assert list(shown["epsilon"]) == ["-", "-", "123", "123", "123", "123"] and shown["SecAgg"].eq("yes").all()
    md = defences.DEFENCES.markdown(rows)
    assert "Random-K SGD (Level 1)" in md and "Original SGD + DP (z=0.01)" in md
    assert defences.defences_plot(rows, tmp_path / "d.png").stat().st_size > 10_000
    missing = defences.defences_frame(cells, {})
    assert (missing["status"] == "missing").all() and missing["ssim_naive"].isna().all()
    assert isinstance(missing, pd.DataFrame)

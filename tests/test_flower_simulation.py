"""Real Flower simulations of the app (``flwr run`` on a private local SuperLink).

One SuperLink serves the module; every run is checked through ``flwr ls`` (``flwr run
--stream`` exits 0 even for failed runs), and no process may be left afterwards.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from experiments.flwr_runner import LocalSuperLink
from experiments.processes import alive, with_text
from fedtrust.interception import InterceptedUpdate

pytestmark = pytest.mark.slow

BASE = {"model": "convnet", "num-server-rounds": 2, "batch-size": 16, "eval-samples": 500,
        "intercept-rounds": "all", "intercept-clients": "all", "compressor": "none", "attack": "none", "mia": False}

CASES = {
    "none-fedavg": {"compressor": "none", "local-mode": "fedavg", "num-server-rounds": 3, "lr": 0.05,
                    "mia": True, "mia-samples": 100, "mia-reference-models": 2},
    "powersgd-allreduce": {"compressor": "powersgd", "level": 2, "powersgd-mode": "allreduce"},
    "powersgd-local": {"compressor": "powersgd", "level": 1, "powersgd-mode": "local"},
    "topk": {"compressor": "topk", "level": 4, "mia": True, "mia-samples": 200},
    "gradinv": {"compressor": "powersgd", "level": 2, "attack": "gradinv", "attack-round": 2,
                "attack-clients": "0,1", "attack-images": 2, "attacker": "both", "attack-iterations": 60},
}


@pytest.fixture(scope="module")
def superlink():
    link = LocalSuperLink()
    with link:
        yield link
    assert link.stopped_pids, "no SuperLink process was seen"
    left = [p for p in link.stopped_pids if alive(p)]
    assert not left, f"processes outlived the tests: {left}"
    assert not with_text(str(link.home)), "a process still uses the run's FLWR_HOME"


@pytest.fixture(scope="module")
def runs(superlink, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    results = {}
    for name, overrides in CASES.items():
        cfg = {**BASE, **overrides, "output-dir": str(out), "run-name": name}
        outcome = superlink.run_app(run_config=cfg, num_supernodes=3, timeout=600)
        results[name] = (outcome, out / name)
    return results


def read_rounds(folder: Path) -> list[dict[str, str]]:
    with (folder / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("name", list(CASES))
def test_run_completes_and_writes_its_folder(runs, name):
    outcome, folder = runs[name]
    assert outcome.ok, f"{name}: {outcome.status} {outcome.details}\n{outcome.log[-3000:]}"
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["compressor"] == CASES[name]["compressor"]
    assert config["versions"]["flwr"].startswith("1.")
    rows = read_rounds(folder)
    assert [int(r["round"]) for r in rows] == list(range(1, int(config["config"]["num-server-rounds"]) + 1))
    assert all(int(r["clients"]) == 3 and int(r["rejected"]) == 0 and int(r["failed"]) == 0 for r in rows)
    # Flower starts the ServerApp with --token <run token>: it must not reach the run folder
    argv = config["argv"]
    assert "--token" in argv and argv[argv.index("--token") + 1] == "<redacted>", argv
    assert (folder / "finished.json").is_file()


@pytest.mark.parametrize("name", list(CASES))
def test_uplink_bytes_equal_the_payload_sizes(runs, name):
    outcome, folder = runs[name]
    assert outcome.ok
    for row in read_rounds(folder):
        items = [InterceptedUpdate.load(p) for p in sorted((folder / "intercepted").glob(f"round{row['round']}_*.pt"))]
        assert len(items) == 3
        assert int(row["uplink_bytes"]) == sum(a.nbytes for it in items for a in it.payload.values())
        if CASES[name]["compressor"] != "none":
            assert int(row["uplink_bytes"]) < int(row["dense_bytes"])


def test_intercepted_update_holds_what_the_server_saw(runs):
    outcome, folder = runs["powersgd-allreduce"]
    assert outcome.ok
    item = InterceptedUpdate.load(folder / "intercepted" / "round2_client0.pt")
    assert item.round == 2 and item.partition_id == 0
    assert any(k.startswith("p/") for k in item.payload) and any(k.startswith("q/") for k in item.payload)
    assert any(k.startswith("Q/") for k in item.public_state) and any(k.startswith("P_hat/") for k in item.public_state)
    assert item.train_config["local-mode"] == "fedsgd" and item.train_config["batch-size"] == 16
    assert item.batch_indices is not None and len(item.batch_indices) == 16
    assert set(item.decoded) <= set(item.global_state)
    # The public state is what the client really used: P_hat^T P_i = (M^T P_hat)^T Q = Q_i^T Q.
    for key in (k for k in item.payload if k.startswith("p/")):
        name = key[2:]
        p_i, q_i = torch.from_numpy(item.payload[key]), torch.from_numpy(item.payload[f"q/{name}"])
        p_hat, q_used = torch.from_numpy(item.public_state[f"P_hat/{name}"]), torch.from_numpy(item.public_state[f"Q/{name}"])
        torch.testing.assert_close(p_hat.T @ p_i, q_i.T @ q_used, rtol=1e-3, atol=1e-5)
        shape = item.decoded[name].shape
        torch.testing.assert_close(item.decoded[name].reshape(shape[0], -1), p_hat @ q_i.T, rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(v).all() for v in item.decoded.values())


def test_fedavg_training_on_the_sample_beats_chance(runs):
    outcome, folder = runs["none-fedavg"]
    assert outcome.ok
    rows = read_rounds(folder)
    # 10 balanced classes: chance is 0.10.
    assert float(rows[-1]["test_accuracy"]) > 0.4, rows


def test_fedavg_run_adds_lira_and_rmia_with_intervals_and_caches_their_reference_models(runs):
    import pandas as pd

    outcome, folder = runs["none-fedavg"]
    assert outcome.ok, outcome.log[-3000:]
    mia = pd.read_csv(folder / "mia.csv")
    ref = mia[mia["scope"] == "reference"]
    assert list(ref["attack"]) == ["lira_online", "lira_offline", "rmia_online", "rmia_offline"]
    assert (ref["reference_models"] == 2).all() and (ref["threshold"] == "shadow").all()
    blackbox = mia[mia["scope"] == "global"]
    assert (blackbox["threshold"] == "oracle").all() and (blackbox["reference_models"] == 0).all()
    # every attack is measured on the same evaluation candidates, with bootstrap intervals
    assert set(mia.loc[mia["client"].isna(), "members"]) == {50} and (mia["resamples"] == 1000).all()
    assert ((mia["auc_low"] <= mia["auc"]) & (mia["auc"] <= mia["auc_high"])).all()
    assert ((mia["tpr_at_1pct_fpr_low"] <= mia["tpr_at_1pct_fpr"])
            & (mia["tpr_at_1pct_fpr"] <= mia["tpr_at_1pct_fpr_high"])).all()
    cached = list((folder.parent / "reference-models").glob("*/ref*.pt"))
    assert len(cached) == 2, cached
    spec = json.loads(next((folder.parent / "reference-models").glob("*/spec.json")).read_text())
    assert (spec["rounds"], spec["clients"], spec["count"]) == (3, 3, 2)  # trained like the target: FedAvg


def test_gradinv_run_writes_csv_pngs_and_grid(runs):
    outcome, folder = runs["gradinv"]
    assert outcome.ok, outcome.log[-3000:]
    with (folder / "gradinv.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # 2 attacked clients x 2 images x 2 attackers, all in round 2
    assert len(rows) == 8
    assert {r["attacker"] for r in rows} == {"naive", "adaptive"}
    assert {r["round"] for r in rows} == {"2"} and {r["client"] for r in rows} == {"0", "1"}
    assert all(r["compressor"] == "powersgd" and r["level"] == "2" for r in rows)
    assert all(-1.0 <= float(r["ssim"]) <= 1.0 and int(r["iterations"]) == 60 for r in rows)
    pngs = sorted(p.name for p in (folder / "gradinv").glob("*.png"))
    assert len([p for p in pngs if "_original_" in p]) == 4 and len(pngs) == 12
    assert (folder / "gradinv_grid.png").stat().st_size > 5000
    # attacked clients' batches held attack-images images, the others batch-size
    items = {p.name: InterceptedUpdate.load(p) for p in (folder / "intercepted").glob("round2_*.pt")}
    assert len(items["round2_client0.pt"].batch_indices) == 2
    assert len(items["round2_client2.pt"].batch_indices) == 16


def test_replay_attacks_saved_updates_offline(runs, tmp_path):
    from fedtrust.attacks.gradinv.replay import main as replay

    outcome, folder = runs["gradinv"]
    assert outcome.ok
    out = tmp_path / "replay"
    assert replay([str(folder), "--attacker", "adaptive", "--iterations", "20", "--rounds", "2",
                   "--clients", "1", "--out", str(out), "--no-progress"]) == 0
    with (out / "gradinv.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["attacker"] for r in rows} == {"adaptive"}
    assert all(int(r["iterations"]) == 20 for r in rows)
    assert (out / "gradinv_grid.png").exists()


def test_mia_run_writes_csv_and_roc(runs):
    outcome, folder = runs["topk"]
    assert outcome.ok, outcome.log[-3000:]
    with (folder / "mia.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    blackbox = [r for r in rows if r["scope"] in ("global", "per_class")]
    update = [r for r in rows if r["scope"] == "update"]
    assert {r["attack"] for r in blackbox} == {"confidence", "loss", "entropy", "modified_entropy"}
    assert all(r["round"] == "2" and r["compressor"] == "topk" and r["level"] == "4" for r in blackbox)
    # 3 clients x 2 rounds intercepted, each attacked by every update attack
    assert len({(r["round"], r["attack"]) for r in update}) == 2 * len({r["attack"] for r in update})
    assert len(update) == 6 * len({r["attack"] for r in update})
    for r in rows:
        assert 0.0 <= float(r["auc"]) <= 1.0 and 0.0 <= float(r["accuracy"]) <= 1.0
        assert int(r["members"]) > 0 and int(r["nonmembers"]) > 0
    assert (folder / "mia_roc.png").stat().st_size > 5000
    assert len(list(folder.glob("mia_update_roc_round*_client*.png"))) == 6

"""Real Flower simulations in which one client is hostile.

The hostile client is the real fedtrust ClientApp wrapped in a Flower client mod that
rewrites its reply before it leaves the node (a copy of the app whose ``clientapp`` is
that wrapper; the ServerApp is fedtrust's own). Modes:

``huge``
    every float the client sends (update, BatchNorm statistics, metrics) becomes 1e30;
``liar``
    round 1: it claims partition 0 (another node's); round 2: three times its examples;
    round 3: a million partitions.

Without the server's bounds, ``huge`` made round 1's test loss 3.65e29 and every later
round NaN, and ``liar`` was aggregated twice, outweighed the others and crashed the
final membership inference.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from experiments.flwr_runner import LocalSuperLink
from fedtrust.interception import InterceptedUpdate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HOSTILE_PARTITION = 2

WRAPPER = '''
"""fedtrust's ClientApp with partition {hostile} made hostile ({mode!r}) by a client mod."""
import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.clientapp import ClientApp

from clients import client_app as honest
from fedtrust import protocol

HOSTILE, MODE = {hostile}, {mode!r}


def hostile(msg, context, call_next):
    reply = call_next(msg, context)
    if int(context.node_config["partition-id"]) != HOSTILE or reply.has_error():
        return reply
    content = reply.content
    if MODE == "huge":
        for name in list(content.keys()):
            record = content[name]
            if isinstance(record, ArrayRecord):
                arrays = {{k: a.numpy() for k, a in record.items()}}
                content[name] = ArrayRecord({{k: Array(np.full_like(v, 1e30) if v.dtype.kind == "f" else v)
                                             for k, v in arrays.items()}})
            elif isinstance(record, MetricRecord):
                content[name] = MetricRecord({{k: (1e30 if isinstance(v, float) else v) for k, v in record.items()}})
    elif MODE == "liar" and protocol.METRICS in content:
        metrics = dict(content[protocol.METRICS])
        server_round = int(msg.content[protocol.CONFIG]["server-round"])
        if server_round == 1:
            metrics["partition-id"] = 0
        elif server_round == 2:
            metrics["num-examples"] = 3 * int(metrics["num-examples"])
        else:
            metrics["num-partitions"] = 1000000
        content[protocol.METRICS] = MetricRecord(metrics)
    return reply


app = ClientApp(mods=[hostile])
app.train()(honest.train)
app.train(protocol.EXCHANGE_ACTION)(honest.train_exchange)
'''


def hostile_app(folder: Path, mode: str) -> Path:
    """A copy of the fedtrust app whose ClientApp is the hostile wrapper."""
    folder.mkdir(parents=True)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "clients.client_app:app"' in pyproject
    (folder / "pyproject.toml").write_text(
        pyproject.replace('clientapp = "clients.client_app:app"', 'clientapp = "hostile_client:app"'))
    (folder / "hostile_client.py").write_text(WRAPPER.format(hostile=HOSTILE_PARTITION, mode=mode))
    return folder


BASE = {"model": "convnet", "local-mode": "fedavg", "lr": 0.05, "num-server-rounds": 2,
        "eval-samples": 500, "intercept-rounds": "none", "compressor": "none", "attack": "none", "mia": False}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def superlink():
    with LocalSuperLink() as link:
        yield link


def run(link, tmp_path, name, overrides, mode=None):
    app = hostile_app(tmp_path / f"app-{name}", mode) if mode else ROOT
    cfg = {**BASE, **overrides, "output-dir": str(tmp_path / "runs"), "run-name": name}
    outcome = link.run_app(app, run_config=cfg, num_supernodes=3, timeout=600)
    assert outcome.ok, f"{name}: {outcome.status} {outcome.details}\n{outcome.log[-3000:]}"
    return outcome, tmp_path / "runs" / name


@pytest.mark.parametrize("compressor", [{"compressor": "none"},
                                        pytest.param({"compressor": "topk", "level": 4}, marks=pytest.mark.extended)],
                         ids=["none", "topk"])
def test_a_client_sending_1e30_cannot_wreck_the_model(superlink, tmp_path, compressor):
    _, honest = run(superlink, tmp_path, "honest", compressor)
    outcome, poisoned = run(superlink, tmp_path, "huge", compressor, mode="huge")
    honest_rows, rows = read_rows(honest / "rounds.csv"), read_rows(poisoned / "rounds.csv")
    for label, table in (("honest", honest_rows), ("one client sends 1e30", rows)):  # shown by pytest -rP
        print(compressor["compressor"], label, [(r["round"], r["test_accuracy"], r["test_loss"], r["clients"],
                                                 r["rejected"]) for r in table])
    assert [r["round"] for r in rows] == ["1", "2"]
    for row in rows:
        assert math.isfinite(float(row["test_loss"])) and float(row["test_loss"]) < 10, row
        assert row["clients"] == "2" and row["rejected"] == "1", row  # the hostile one, every round
        assert math.isfinite(float(row["train_loss"])), row
    assert all(r["rejected"] == "0" and r["clients"] == "3" for r in honest_rows)
    # two honest clients of three reach what three do, within a few points
    assert abs(float(rows[-1]["test_accuracy"]) - float(honest_rows[-1]["test_accuracy"])) <= 0.05, (
        rows, honest_rows)
    assert float(rows[-1]["test_accuracy"]) > 0.4
    refusals = re.findall(r"refused node \d+ \(partition 2\): update norm ([0-9.e+]+) is above max-norm-ratio",
                          outcome.log)
    assert len(refusals) == 2 and all(float(n) > 1e29 for n in refusals), outcome.log[-3000:]


@pytest.mark.extended  # the partition-claim checks run by default (test_hardening.py, unit tests)
def test_a_client_that_lies_about_its_partition_is_refused(superlink, tmp_path):
    outcome, folder = run(superlink, tmp_path, "liar", {
        "num-server-rounds": 3, "intercept-rounds": "all", "intercept-clients": "all",
        "mia": True, "mia-samples": 200}, mode="liar")
    rows = read_rows(folder / "rounds.csv")
    # round 1: the liar and the real partition 0 both claim 0 (both refused, nobody counted twice);
    # round 2: the liar claims 3x its examples; round 3: a million partitions
    assert [(r["clients"], r["rejected"]) for r in rows] == [("1", "2"), ("2", "1"), ("2", "1")], rows
    assert "is claimed by nodes" in outcome.log
    assert "is not the 1000 that partition 2 of 3 gives" in outcome.log
    assert "num-partitions=1000000 is more than the 3000 train samples" in outcome.log
    # intercepted only what was accepted, each file written once
    files = sorted(p.name for p in (folder / "intercepted").glob("*.pt"))
    assert files == ["round1_client1.pt", "round2_client0.pt", "round2_client1.pt",
                     "round3_client0.pt", "round3_client1.pt"], files
    assert InterceptedUpdate.load(folder / "intercepted" / "round2_client0.pt").partition_id == 0
    # the final membership inference ran over the partitions of the run's 3
    final = [r for r in read_rows(folder / "mia.csv") if r["client"] == ""]
    assert final and all(r["round"] == "3" for r in final)
    assert (folder / "finished.json").is_file()

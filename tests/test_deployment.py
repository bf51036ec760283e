"""The deployment path on loopback: a TLS SuperLink, real SuperNodes, ``flwr run`` against them.

One deployment (to keep CI short) checks everything the deployment path promises:
certificates made by the test (deploy/make-certificates.sh, openssl), SuperNodes with
``--node-config``, PowerSGD all-reduce with the interception of one client, a client
that fails (fault injection) and one whose machine drops out mid-run, the final status
read from ``flwr ls`` (``flwr run --stream`` exits 0 even for failed runs), and no process
left afterwards.
"""

from __future__ import annotations

import csv
import time

import pytest

from experiments.flwr_runner import _alive
from experiments.loopback_deployment import LoopbackDeployment
from fedtrust.interception import InterceptedUpdate

pytestmark = pytest.mark.slow


def rows_of(folder):
    if not (folder / "rounds.csv").exists():
        return []
    with (folder / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_tls_deployment_survives_failing_and_dropped_clients(tmp_path):
    dep = LoopbackDeployment(tmp_path / "dep", num_nodes=3, per_node={2: {"fail-rounds": "2"}})
    folder = tmp_path / "runs" / "tls"
    try:
        dep.start()
        connection = (dep.home / "config.toml").read_text()
        assert "root-certificates" in connection and "insecure" not in connection
        run_id = dep.submit(run_config={
            "model": "convnet", "num-server-rounds": 3, "min-clients": 1, "compressor": "powersgd",
            "level": 2, "powersgd-mode": "allreduce", "batch-size": 8, "eval-samples": 200,
            "round-timeout": 45.0, "intercept-rounds": "1", "intercept-clients": "0",
            "output-dir": str(tmp_path / "runs"), "run-name": "tls"}, superlink=dep.CONNECTION)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not rows_of(folder):
            time.sleep(1)
        assert rows_of(folder), "round 1 never finished"
        dep.kill_node(1)  # a client machine drops out after round 1
        outcome = dep.wait(run_id, timeout=600, superlink=dep.CONNECTION)
    finally:
        dep.stop()
    assert outcome.ok, f"{outcome.status}: {outcome.log[-3000:]}"
    rows = rows_of(folder)
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["clients"] == "3" and rows[0]["failed"] == "0" and rows[0]["rejected"] == "0"
    # round 2: node 1 is gone and node 2 fails on purpose; node 0 still trains
    assert rows[1]["clients"] == "1" and int(rows[1]["failed"]) >= 1
    assert rows[2]["clients"] == "2"  # node 2 is back, node 1 stays gone
    item = InterceptedUpdate.load(folder / "intercepted" / "round1_client0.pt")
    assert item.compressor["compressor"] == "powersgd"
    assert any(k.startswith("p/") for k in item.payload) and any(k.startswith("q/") for k in item.payload)
    assert dep.stopped_pids and not [p for p in dep.stopped_pids if _alive(p)]

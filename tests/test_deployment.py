"""The deployment path on loopback: a TLS SuperLink, real SuperNodes, ``flwr run`` against them.

Certificates are made by the test (deploy/make-certificates.sh, openssl). The run's
final status is read from ``flwr ls`` (``flwr run --stream`` exits 0 even for failed
runs), and every process started is gone afterwards.
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
    with (folder / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_tls_deployment_with_powersgd_and_interception(tmp_path):
    dep = LoopbackDeployment(tmp_path / "dep", num_nodes=2)
    try:
        dep.start()
        assert "root-certificates" in (dep.home / "config.toml").read_text()
        outcome = dep.run_app(run_config={
            "model": "convnet", "num-server-rounds": 2, "compressor": "powersgd", "level": 2,
            "powersgd-mode": "allreduce", "batch-size": 8, "eval-samples": 200,
            "intercept-rounds": "2", "intercept-clients": "1",
            "output-dir": str(tmp_path / "runs"), "run-name": "tls"}, timeout=600)
    finally:
        dep.stop()
    assert outcome.ok, f"{outcome.status}: {outcome.log[-3000:]}"
    folder = tmp_path / "runs" / "tls"
    rows = rows_of(folder)
    assert [r["round"] for r in rows] == ["1", "2"]
    assert all(r["clients"] == "2" and r["failed"] == "0" and r["rejected"] == "0" for r in rows)
    item = InterceptedUpdate.load(folder / "intercepted" / "round2_client1.pt")
    assert item.compressor["compressor"] == "powersgd" and any(k.startswith("q/") for k in item.payload)
    assert dep.stopped_pids and not [p for p in dep.stopped_pids if _alive(p)]


def test_failing_and_dropped_clients_do_not_stop_the_run(tmp_path):
    """Node 2 raises in round 2 (fault injection); node 1 is killed after round 1 (a dropout)."""
    dep = LoopbackDeployment(tmp_path / "dep", num_nodes=3, per_node={2: {"fail-rounds": "2"}})
    folder = tmp_path / "runs" / "faults"
    try:
        dep.start()
        run_id = dep.submit(run_config={
            "model": "convnet", "num-server-rounds": 3, "min-clients": 1, "batch-size": 8,
            "eval-samples": 200, "round-timeout": 60.0, "intercept-rounds": "none",
            "output-dir": str(tmp_path / "runs"), "run-name": "faults"}, superlink=dep.CONNECTION)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not ((folder / "rounds.csv").exists() and rows_of(folder)):
            time.sleep(1)
        assert rows_of(folder), "round 1 never finished"
        dep.kill_node(1)  # a client machine drops out
        outcome = dep.wait(run_id, timeout=600, superlink=dep.CONNECTION)
    finally:
        dep.stop()
    assert outcome.ok, f"{outcome.status}: {outcome.log[-3000:]}"
    rows = rows_of(folder)
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["clients"] == "3" and rows[0]["failed"] == "0"
    # round 2: node 1 is gone and node 2 fails on purpose; node 0 still trains and the model moves on
    assert rows[1]["clients"] == "1" and int(rows[1]["failed"]) >= 1
    assert rows[2]["clients"] == "2"

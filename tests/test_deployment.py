"""The deployment path on loopback: a TLS SuperLink, real SuperNodes, ``flwr run`` against them.

One deployment (to keep CI short) checks everything the deployment path promises:
certificates made by the test (deploy/make-certificates.sh, openssl), SuperNode
authentication (``--enable-supernode-auth``, node keys registered with ``flwr supernode
register`` before the nodes start; a SuperNode whose key nobody registered and one that
brings no key and asks to register itself are both refused and never become nodes),
SuperNodes with ``--node-config``, PowerSGD all-reduce with the interception of one
client, a client that fails (fault injection) and one whose machine drops out mid-run, the
final status read from ``flwr ls`` (``flwr run --stream`` exits 0 even for failed runs),
and no process left afterwards.
"""

from __future__ import annotations

import csv
import subprocess
import time

import pytest

from experiments.loopback_deployment import LoopbackDeployment, make_node_key
from experiments.processes import alive
from fedtrust.interception import InterceptedUpdate

pytestmark = pytest.mark.slow


def rows_of(folder):
    if not (folder / "rounds.csv").exists():
        return []
    with (folder / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


def exit_status(proc, deadline):
    """The process's exit status, or None if it still runs at ``deadline`` (monotonic)."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def test_tls_deployment_survives_failing_and_dropped_clients(tmp_path):
    dep = LoopbackDeployment(tmp_path / "dep", num_nodes=3, per_node={2: {"fail-rounds": "2"}})
    folder = tmp_path / "runs" / "tls"
    try:
        dep.start()
        connection = (dep.home / "config.toml").read_text()
        assert "root-certificates" in connection and "insecure" not in connection
        assert len(dep.node_ids) == 3  # registered through the Control API before the nodes started
        # Two strangers that reach the Fleet port with the public CA certificate: one with a
        # key that was never registered, one without a key (it makes one and asks the
        # SuperLink to register it, which any host could do without --enable-supernode-auth).
        strangers = {"stranger-key": make_node_key(tmp_path / "stranger"), "stranger-nokey": None}
        procs = {name: dep.start_supernode(name, key, {"partition-id": 0, "num-partitions": 3})
                 for name, key in strangers.items()}
        refused_by = time.monotonic() + 120
        run_id = dep.submit(run_config={
            "model": "convnet", "num-server-rounds": 3, "min-clients": 1, "compressor": "powersgd",
            "level": 2, "powersgd-mode": "allreduce", "batch-size": 8, "eval-samples": 200,
            "round-timeout": 45.0, "intercept-rounds": "1", "intercept-clients": "0", "attack": "none", "mia": False,
            "output-dir": str(tmp_path / "runs"), "run-name": "tls"}, superlink=dep.CONNECTION)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not rows_of(folder):
            time.sleep(1)
        assert rows_of(folder), "round 1 never finished"
        exits = {name: exit_status(proc, refused_by) for name, proc in procs.items()}
        known = {int(node["node-id"]) for node in dep.list_nodes()}
        dep.kill_node(1)  # a client machine drops out after round 1
        outcome = dep.wait(run_id, timeout=600, superlink=dep.CONNECTION)
    finally:
        dep.stop()
    logs = {name: (dep.workdir / f"{name}.log").read_text(errors="replace") for name in strangers}
    assert exits == {"stranger-key": 1, "stranger-nokey": 1}, f"strangers not refused: {exits}\n{logs}"
    assert "[code: 2004] Failed to activate SuperNode" in logs["stranger-key"], logs["stranger-key"]
    assert "[code: 2001] SuperNode authentication is enabled" in logs["stranger-nokey"], logs["stranger-nokey"]
    assert known == set(dep.node_ids), f"nodes {known}, registered {dep.node_ids}"
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
    assert dep.stopped_pids and not [p for p in dep.stopped_pids if alive(p)]

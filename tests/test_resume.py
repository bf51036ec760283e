"""Resuming a run for real (``flwr run`` on private local SuperLinks): nothing lost, repeated or mixed.

A server killed mid-run resumes from its checkpoint; a resume with another configuration
is refused; a finished run resumed changes nothing; rows written after the last
checkpoint are written once. Every run is checked through ``flwr ls``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch

from experiments.flwr_runner import LocalSuperLink

pytestmark = pytest.mark.slow

BASE = {"model": "convnet", "num-server-rounds": 2, "batch-size": 16, "eval-samples": 500,
        "intercept-rounds": "all", "intercept-clients": "all", "attack": "none", "mia": False}


def read_rounds(folder: Path) -> list[dict[str, str]]:
    with (folder / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def superlink():
    with LocalSuperLink() as link:
        yield link


def test_interrupted_run_resumes_without_repeating_rounds(tmp_path):
    rounds = 4  # a round takes seconds: the kill after round 1's checkpoint (polled every 20 ms) lands mid-run
    cfg = {**BASE, "compressor": "topk", "level": 2, "num-server-rounds": rounds, "intercept-rounds": "none",
           "eval-samples": 100, "output-dir": str(tmp_path), "run-name": "resumed"}
    folder = tmp_path / "resumed"
    link = LocalSuperLink()
    try:
        link.start()
        link.submit(run_config=cfg, num_supernodes=2)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (folder / "checkpoint.pt").exists():
            time.sleep(0.02)
    finally:
        link.stop()  # the server machine goes down mid-run
    assert (folder / "checkpoint.pt").exists(), "no checkpoint was written"
    done = int(torch.load(folder / "checkpoint.pt", weights_only=True)["round"])
    assert 1 <= done < rounds, "the run finished before it could be interrupted"
    before = [r for r in read_rounds(folder) if int(r["round"]) <= done]
    config_before = (folder / "config.json").read_text()

    with LocalSuperLink() as again:
        # another configuration is refused, naming what differs, before anything is touched
        wrong = again.run_app(run_config={**cfg, "resume": True, "level": 4}, num_supernodes=2, timeout=600)
        assert not wrong.ok and "level: 2 -> 4" in wrong.log, wrong.log[-3000:]
        assert [r for r in read_rounds(folder) if int(r["round"]) <= done] == before
        outcome = again.run_app(run_config={**cfg, "resume": True}, num_supernodes=2, timeout=600)
        assert outcome.ok, outcome.log[-3000:]
        rows = read_rounds(folder)
        assert [int(r["round"]) for r in rows] == list(range(1, rounds + 1))
        assert rows[:done] == before  # finished rounds are neither repeated nor lost
        assert (folder / "config.json").read_text() == config_before
        assert int(torch.load(folder / "checkpoint.pt", weights_only=True)["round"]) == rounds
        assert f"resuming after round {done}" in outcome.log
        # a finished run resumed is a no-op that says so: no file changes
        files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        noop = again.run_app(run_config={**cfg, "resume": True}, num_supernodes=2, timeout=600)
    assert noop.ok and "resuming it does nothing" in noop.log, noop.log[-3000:]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files


@pytest.mark.extended
def test_rows_written_after_the_last_checkpoint_are_not_repeated(superlink, tmp_path):
    """Killed after a round's mia.csv / gradinv.csv rows but before its checkpoint: written once."""
    cfg = {**BASE, "compressor": "topk", "level": 2, "mia": True, "mia-samples": 100,
           "attack": "gradinv", "attack-round": 2, "attack-clients": "0", "attack-images": 2,
           "attacker": "naive", "attack-iterations": 5, "output-dir": str(tmp_path), "run-name": "rewound"}
    folder = tmp_path / "rewound"
    assert superlink.run_app(run_config=cfg, num_supernodes=2, timeout=600).ok

    def keys(name):
        with (folder / name).open() as fh:
            rows = list(csv.DictReader(fh))
        return sorted(tuple(r[k] for k in ("round", "client", "attack", "scope", "attacker", "image") if k in r)
                      for r in rows)

    mia, gradinv = keys("mia.csv"), keys("gradinv.csv")
    assert {m[1] for m in mia} == {"", "0", "1"}  # update attacks per client, the final model's rows
    # the state of a server killed after round 2's rows reached the CSVs, before its checkpoint
    (folder / "finished.json").unlink()
    blob = torch.load(folder / "checkpoint.pt", weights_only=True)
    blob["round"] = 1
    torch.save(blob, folder / "checkpoint.pt")
    outcome = superlink.run_app(run_config={**cfg, "resume": True}, num_supernodes=2, timeout=600)
    assert outcome.ok, outcome.log[-3000:]
    assert "dropped rows written after round 1's checkpoint" in outcome.log
    assert keys("mia.csv") == mia and keys("gradinv.csv") == gradinv  # as many rows of each kind, once

"""The experiment scripts (``python -m experiments.table1 | table2 | tradeoff``).

Planning, the cell store, the GPU-worker queue and the table arithmetic are tested
without Flower (hand-made records, fake SuperLinks with fake GPU lists). One real
scenario drives ``table1`` on an ImageFolder tree (``--datasets folder:PATH``) made
from the embedded sample: it is stopped with SIGTERM and later with SIGKILL while a
cell runs, and rerun; finished cells must not be recomputed, the interrupted ones
must be redone, and no SuperLink may outlive a killed sweep.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from experiments import table1, tradeoff
from experiments.plan import build_cells, make_cell, parse_algorithms, resolve_dataset
from experiments.processes import under as processes_under
from experiments.profiles import (
    PAPER,
    PROFILES,
    SMOKE,
    Algorithm,
)
from experiments.runconfig import Override, app_defaults, canonical, config_hash
from experiments.store import CellRecord, CellStore, FolderLock, read_jsonl
from experiments.summaries import AttackScore, ImageScore, RoundsSummary, RunSummary
from experiments.sweep import CellOutcome, Worker, make_workers, run_sweep, visible_gpus
from experiments.tables import (
    labels_caption,
    table1_frame,
    table1_markdown,
    table2_frame,
    tradeoff_frame,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def smoke_cells(kinds=("gradinv", "mia", "update"), algos=None, overrides=()):
    return build_cells(SMOKE, kinds, ("sample",), algos or SMOKE.algorithms, [Override.parse(o) for o in overrides])


def fake_record(cell, run_dir: str = "", *, ssim=None, mia=None, accuracy=0.5, uplink=1000.0, dense=4000.0):
    """A store record of the shape :func:`experiments.sweep.execute_cell` makes (``run_dir``: relative)."""
    images = tuple(ImageScore(attacker=attacker, round=1, client=i, image=0, label=0, label_inferred=False,
                              ssim=value, psnr=10.0, mse=0.1, iterations=1, seconds=0.1)
                   for attacker, values in (ssim or {}).items() for i, value in enumerate(values))
    summary = RunSummary(rounds=RoundsSummary(rounds=1, test_accuracy=accuracy, test_loss=1.0,
                                              uplink_bytes_per_client_round=uplink,
                                              dense_bytes_per_client_round=dense),
                         images=images, attacks=tuple(mia or ()))
    return CellRecord(key=cell.key, name=cell.name, kind=cell.kind, status="ok", dataset=cell.dataset,
                      algorithm=cell.algorithm.family, level=cell.algorithm.level, run_dir=str(run_dir),
                      seed=cell.seed, run_config=dict(cell.run_config), summary=summary, script="test")


def mia_result(attack, scope, accuracy, auc, round_=5, members=250, nonmembers=250):
    return AttackScore(attack=attack, scope=scope, round=round_, accuracy=accuracy, auc=auc, tpr_at_1pct_fpr=0.02,
                       tpr_at_0_1pct_fpr=0.0, members=members, nonmembers=nonmembers)


# ----------------------------------------------------------------------------- run configs and cells
def test_override_parsing_takes_toml_values_and_kinds():
    assert Override.parse("lr=0.05") == Override("lr", 0.05)
    assert Override.parse("model='convnet'") == Override("model", "convnet")
    assert Override.parse("model=convnet").value == "convnet"  # a bare word stays a string
    assert Override.parse("mia:num-server-rounds=20") == Override("num-server-rounds", 20, "mia")
    assert Override.parse("mia=true").value is True
    with pytest.raises(ValueError, match="kind"):
        Override.parse("bogus:lr=1")
    with pytest.raises(ValueError, match="key=value"):
        Override.parse("lr")


def test_canonical_config_is_complete_and_resets_ignored_keys():
    defaults = app_defaults()
    cfg = canonical({"attack": "none", "attack-iterations": 5, "lr": 1, "compressor": "none", "level": 7,
                     "output-dir": "/x", "run-name": "y"}, defaults)
    assert set(cfg) == set(defaults) - {"output-dir", "run-name"}
    assert cfg["attack-iterations"] == defaults["attack-iterations"]  # ignored without an attack
    assert cfg["level"] == defaults["level"]  # ignored without compression
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    with pytest.raises(ValueError, match="unknown"):
        canonical({"no-such-key": 1}, defaults)


def test_cell_key_changes_with_any_setting_that_reaches_the_app():
    base = make_cell("gradinv", "sample", Algorithm("topk", 1), SMOKE)
    same = make_cell("gradinv", "sample", Algorithm("topk", 1), SMOKE, [Override.parse("lr=0.1")])
    assert base.key == same.key and base.name == same.name
    for text in ("lr=0.2", "attack-iterations=10", "seed=1", "num-supernodes=4", "gradinv:tv-weight=0.01"):
        assert make_cell("gradinv", "sample", Algorithm("topk", 1), SMOKE, [Override.parse(text)]).key != base.key, text
    # an override for another kind, or one the app ignores for this kind, keeps the cell
    assert make_cell("gradinv", "sample", Algorithm("topk", 1), SMOKE, [Override.parse("mia:lr=0.3")]).key == base.key
    mia = make_cell("mia", "sample", Algorithm("topk", 1), SMOKE)
    assert make_cell("mia", "sample", Algorithm("topk", 1), SMOKE, [Override.parse("attack-iterations=7")]).key == mia.key
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})


def test_cells_fix_dataset_and_algorithm_and_name_every_attacked_client():
    cell = make_cell("gradinv", "sample", Algorithm("powersgd", 4), SMOKE, [Override.parse("num-supernodes=5")])
    assert (cell.run_config["compressor"], cell.run_config["level"], cell.run_config["dataset"]) == ("powersgd", 4, "sample")
    assert cell.run_config["attack-clients"] == "0,1,2,3,4" and cell.num_supernodes == 5
    assert cell.name.startswith("gradinv-sample-powersgd4-") and cell.name.endswith(cell.key)
    for bad in ("compressor='topk'", "dataset='mnist'", "level=2", "run-name='x'", "resume=true"):
        with pytest.raises(ValueError, match="the sweep sets it"):
            make_cell("gradinv", "sample", Algorithm("sgd"), SMOKE, [Override.parse(bad)])
    with pytest.raises(ValueError, match="not a run-config key"):
        make_cell("gradinv", "sample", Algorithm("sgd"), SMOKE, [Override.parse("atack-iterations=3")])
    with pytest.raises(ValueError):  # the app's own validation
        make_cell("gradinv", "sample", Algorithm("sgd"), SMOKE, [Override.parse("local-mode='fedavg'")])


def test_algorithms_come_in_the_papers_order():
    assert [a.key for a in PAPER.algorithms] == ["sgd", "powersgd1", "topk1", "powersgd2", "topk2", "powersgd4",
                                                 "topk4", "powersgd30", "topk30", "powersgd50", "topk50"]
    assert [a.key for a in parse_algorithms("topk4,sgd,powersgd1", ())] == ["sgd", "powersgd1", "topk4"]
    assert Algorithm("topk", 30).label == "Top-K SGD (Level 30)*"
    with pytest.raises(ValueError, match="expected sgd, powersgdN, qsgdN, randomkN, signsgd or topkN"):
        Algorithm.parse("powersgd")
    with pytest.raises(ValueError, match="needs level"):
        Algorithm("sgd", 2)


def test_algorithms_are_described_by_their_codecs():
    """Keys, row labels, figure tags and styles of the paper's tables come from the codec registry."""
    got = [(a.key, a.label, a.tag, a.codec.style, a.codec.display, a.baseline) for a in SMOKE.algorithms]
    assert got == [("sgd", "Original SGD", "SGD", ("black", "o"), "SGD", True),
                   ("powersgd1", "PowerSGD (Rank 1)", "r1", ("tab:blue", "s"), "PowerSGD", False),
                   ("topk1", "Top-K SGD (Level 1)*", "L1", ("tab:orange", "^"), "Top-K", False),
                   ("powersgd4", "PowerSGD (Rank 4)", "r4", ("tab:blue", "s"), "PowerSGD", False),
                   ("topk4", "Top-K SGD (Level 4)*", "L4", ("tab:orange", "^"), "Top-K", False)]
    assert [Algorithm.parse(a.key) for a in PAPER.algorithms] == list(PAPER.algorithms)
    assert Algorithm("sgd").run_config() == {"compressor": "none", "level": 1}
    assert Algorithm("powersgd", 4).run_config() == {"compressor": "powersgd", "level": 4}


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_tradeoff_reuses_the_cells_of_tables_1_and_2(profile):
    def keys(kinds):
        return {c.key for c in build_cells(profile, kinds, profile.datasets, profile.algorithms)}

    assert keys(tradeoff.SCRIPT.kinds) <= keys(table1.SCRIPT.kinds) | keys(("mia", "update"))
    assert len(keys(tradeoff.SCRIPT.kinds)) == 2 * len(profile.datasets) * len(profile.algorithms)


def test_paper_profile_matches_the_papers_setup():
    cells = build_cells(PAPER, ("gradinv",), PAPER.datasets, PAPER.algorithms)
    assert PAPER.datasets == ("cifar10", "cifar100", "mnist") and len(cells) == 33
    cfg = cells[0].run_config
    assert cfg["model"] == "resnet18" and cfg["attack-iterations"] == 24000 and cfg["tv-weight"] == 1e-4
    assert cfg["attacker"] == "both" and cfg["attack-images"] == 1 and cfg["attack-round"] == 1
    assert len(cfg["attack-clients"].split(",")) == cells[0].num_supernodes == 10  # 10 images per configuration
    assert cfg["client-model-mode"] == "eval"  # the paper's BatchNorm setting (Geiping et al.'s code)
    assert make_cell("update", "cifar10", Algorithm("sgd"), PAPER).run_config["client-model-mode"] == "eval"
    mia = make_cell("mia", "cifar10", Algorithm("sgd"), PAPER).run_config
    assert mia["local-mode"] == "fedavg" and mia["mia"] is True and mia["num-server-rounds"] >= 30


def test_folder_dataset_is_resolved_to_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_dataset("folder:imgs") == f"folder:{tmp_path / 'imgs'}"
    cell = make_cell("gradinv", resolve_dataset("folder:imgs"), Algorithm("sgd"), SMOKE)
    assert cell.name.startswith("gradinv-folder-imgs-sgd-")
    with pytest.raises(ValueError, match="not a folder"):
        resolve_dataset("folder:missing")


# ----------------------------------------------------------------------------- the store
def test_store_appends_durably_and_skips_a_torn_last_line(tmp_path):
    store = CellStore(tmp_path)
    store.add(CellRecord(key="a", seconds=1.0))
    store.add(CellRecord(key="b", seconds=2.0))
    store.add(CellRecord(key="a", seconds=3.0))
    with (tmp_path / "cells.jsonl").open("a") as fh:
        fh.write('{"key": "c", "status": "o')  # a write cut short by a kill
    with pytest.warns(UserWarning, match="cut short"):
        again = CellStore(tmp_path)
    assert len(again) == 2 and "c" not in again and again.get("a").seconds == 3.0
    store.add_failure(CellRecord(key="d", status="failed"))
    with pytest.warns(UserWarning, match="cut short"):
        assert "d" not in CellStore(tmp_path)
    assert [r["key"] for r in read_jsonl(tmp_path / "failed.jsonl")] == ["d"]
    assert [r.status for r in store.failures()] == ["failed"]


def test_a_record_after_a_torn_line_is_kept(tmp_path):
    store = CellStore(tmp_path)
    store.add(CellRecord(key="a"))
    with (tmp_path / "cells.jsonl").open("a") as fh:
        fh.write('{"key": "b", "sta')  # kill -9 or a full disk in the middle of a record
    store.add(CellRecord(key="c"))  # a finished cell after the torn one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = CellStore(tmp_path)
    assert sorted(r.key for r in again) == ["a", "c"]  # the torn line did not take "c" with it
    assert json.loads((tmp_path / "cells.jsonl").read_text().splitlines()[2])["key"] == "c"
    assert [str(w.message).split(" (")[0] for w in caught] == [f"{tmp_path / 'cells.jsonl'}:2: skipped a record cut short"]


def test_folder_lock_is_exclusive(tmp_path):
    with FolderLock(tmp_path):
        second = FolderLock(tmp_path)
        with pytest.raises(RuntimeError, match="another sweep"):
            second.__enter__()
    with FolderLock(tmp_path):  # released
        pass


def test_a_record_reads_back_as_written(tmp_path):
    cell = smoke_cells(("gradinv",))[0]
    record = fake_record(cell, f"runs/{cell.name}", ssim={"naive": [0.25, 0.5]}, mia=[mia_result("loss", "global", 0.5, 0.6)])
    store = CellStore(tmp_path)
    store.add(record)
    again = CellStore(tmp_path).get(cell.key)
    assert again == record and again.ok and again.summary.images[1].ssim == 0.5
    assert again.run_path(tmp_path) == tmp_path / "runs" / cell.name
    blob = read_jsonl(tmp_path / "cells.jsonl")[0]  # the JSON layout of earlier stores
    assert blob["summary"]["gradinv"]["images"][0]["attacker"] == "naive"
    assert blob["summary"]["mia"]["results"][0]["attack"] == "loss" and blob["run_dir"] == f"runs/{cell.name}"


def test_an_older_store_with_absolute_paths_is_read_relative(tmp_path):
    """Stores written before results travelled named run folders by absolute path."""
    out = tmp_path / "sweep"
    cell = smoke_cells(("gradinv",))[0]
    blob = fake_record(cell, ssim={"naive": [0.3]}).to_json()
    inside = {**blob, "run_dir": str(out / "runs" / cell.name), "log": str(out / "runs" / cell.name / "flwr.log"),
              "run_config": {**blob["run_config"], "output-dir": str(out / "runs")}}
    elsewhere = {**blob, "key": "x", "run_dir": "/somewhere/else/runs/x"}
    moved = {**blob, "key": "y", "run_dir": "/machine/that/made/it/runs/y"}
    (out / "runs" / "y").mkdir(parents=True)
    (out / "cells.jsonl").write_text("".join(json.dumps(b) + "\n" for b in (inside, elsewhere, moved)))
    store = CellStore(out)
    rec = store.get(cell.key)
    assert (rec.run_dir, rec.log, rec.run_config["output-dir"]) == (f"runs/{cell.name}", f"runs/{cell.name}/flwr.log",
                                                                    "runs")
    assert store.get("x").run_dir == "/somewhere/else/runs/x"  # outside the sweep folder: kept
    assert store.get("y").run_dir == "runs/y"  # a moved sweep folder: found by its run folder's name
    assert rec.summary.images[0].ssim == 0.3


def _run_folder(folder: Path, run_config: dict, *, images: int = 2) -> None:
    """What the app leaves in a finished gradinv run folder (config.json, rounds.csv, gradinv.csv)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run_id": 7, "config": run_config, "num_parameters": 10}))
    (folder / "rounds.csv").write_text("round,test_accuracy,test_loss,train_loss,clients,rejected,failed,uplink_bytes,"
                                       "dense_bytes,buffer_bytes,seconds,clipped\n"
                                       "1,0.5,2.0,,3,0,0,3000,12000,,1.5,0\n")
    rows = "".join(f"1,{i},0,3,False,naive,none,0,0.1234{i}6,12.5,0.01,5,0.25,42\n" for i in range(images))
    (folder / "gradinv.csv").write_text("round,client,image,label,label_inferred,attacker,compressor,level,ssim,psnr,"
                                        "mse,iterations,seconds,seed\n" + rows)


def test_a_run_folder_is_summarised_into_typed_rows(tmp_path):
    from experiments.summaries import IncompleteRun, summarize_run

    _run_folder(tmp_path / "run", {})
    summary = summarize_run(tmp_path / "run", "gradinv")
    assert summary.rounds.uplink_bytes_per_client_round == 1000.0 and summary.rounds.train_loss is None
    assert summary.images[1] == ImageScore(attacker="naive", round=1, client=1, image=0, label=3, label_inferred=False,
                                           ssim=0.123416, psnr=12.5, mse=0.01, iterations=5, seconds=0.25)
    assert summary.app.run_id == 7 and RunSummary.from_json(summary.to_json()) == summary
    (tmp_path / "run" / "gradinv.csv").write_text("round,client,image,label,label_inferred,attacker,compressor,level,"
                                                  "ssim,psnr,mse,iterations,seconds,seed\n")
    with pytest.raises(IncompleteRun, match="no rows"):
        summarize_run(tmp_path / "run", "gradinv")
    with pytest.raises(IncompleteRun, match="lacks mia.csv"):
        summarize_run(tmp_path / "run", "mia")


# ----------------------------------------------------------------------------- workers and the queue
class FakeLink:
    """Stands in for LocalSuperLink: records its worker's environment and how often it was opened."""

    made: ClassVar[list[FakeLink]] = []

    def __init__(self, worker: Worker, root: Path) -> None:
        self.worker, self.root, self.entered, self.exited = worker, root, 0, 0
        self.env = worker.env
        FakeLink.made.append(self)

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        self.exited += 1


def _fake_execute(barrier: threading.Barrier | None, seen: list, fail: set = frozenset()):
    lock = threading.Lock()

    def execute(link, cell, worker):
        if barrier is not None:
            barrier.wait(timeout=20)  # every worker must hold a cell at the same time
        with lock:
            seen.append((cell.key, worker.label, link.env.get("CUDA_VISIBLE_DEVICES")))
        if cell.key in fail:
            return CellOutcome(cell, "failed", CellRecord(key=cell.key, status="failed"), error="boom",
                               worker=worker.label)
        return CellOutcome(cell, "computed", CellRecord(key=cell.key, name=cell.name), worker=worker.label)

    return execute


class RunLink(FakeLink):
    """A SuperLink double whose ``flwr run`` leaves a finished (or no) run folder."""

    finish = True

    def run_app(self, run_config=None, num_supernodes=2, federation_config=None, timeout=900):
        from types import SimpleNamespace

        if self.finish:
            _run_folder(Path(run_config["output-dir"]) / run_config["run-name"],
                        {k: v for k, v in run_config.items() if k not in ("output-dir", "run-name")})
        return SimpleNamespace(ok=self.finish, status="completed" if self.finish else "failed", details="",
                               run_id=7, log="the log")


def test_a_cell_record_names_its_run_folder_relative_to_the_sweep_folder(tmp_path):
    from experiments.sweep import execute_cell

    cell = smoke_cells(("gradinv",))[0]
    out = tmp_path / "out"
    link = RunLink(Worker(0, None), tmp_path)
    done = execute_cell(link, cell, out, Worker(0, None), timeout=5, gpu_client_share=0.1, script="t", commit=None)
    rec = done.record
    assert done.status == "computed" and rec.ok and rec.run_dir == f"runs/{cell.name}"
    assert rec.log == f"runs/{cell.name}/flwr.log" and (out / rec.log).read_text() == "the log"
    assert rec.run_config["output-dir"] == "runs" and rec.summary.rounds.test_accuracy == 0.5
    assert (rec.algorithm, rec.level, rec.seed) == (cell.algorithm.family, cell.algorithm.level, cell.seed)
    again = execute_cell(link, cell, out, Worker(0, None), timeout=5, gpu_client_share=0.1, script="t", commit=None,
                         previous=rec)  # --force: into another folder; the old one goes once this is stored
    assert again.record.run_dir == f"runs/{cell.name}-rerun" and again.replaces == str((out / rec.run_dir).resolve())
    link.finish = False
    failed = execute_cell(link, cell, out, Worker(0, None), timeout=5, gpu_client_share=0.1, script="t", commit=None,
                          previous=again.record)
    assert failed.status == "failed" and failed.record.status == "failed" and not failed.link_broken
    assert failed.record.log == f"failed/{cell.name}.log"


def test_sweep_functions_do_one_job_each():
    """No function of the sweep runs past about 60 lines of code."""
    import ast

    path = REPO / "experiments" / "sweep.py"
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            body = node.body[1:] if isinstance(node.body[0], ast.Expr) and len(node.body) > 1 else node.body
            code = [ln for ln in lines[body[0].lineno - 1:node.end_lineno] if ln.strip() and not ln.strip().startswith("#")]
            assert len(code) <= 60, f"{node.name}: {len(code)} lines"


def test_workers_one_per_gpu_or_one_cpu_worker(monkeypatch):
    assert make_workers([]) == [Worker(0, None)] and make_workers([])[0].env == {}
    workers = make_workers([0, 2, 3])
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["0", "2", "3"]
    with pytest.raises(ValueError, match="duplicates"):
        make_workers([1, 1])
    import torch

    assert visible_gpus() == ([] if not torch.cuda.is_available() else list(range(torch.cuda.device_count())))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert visible_gpus() == [0, 1, 2, 3]


def test_sweep_spreads_cells_over_gpu_workers_in_parallel(tmp_path):
    cells = smoke_cells(("gradinv", "mia", "update"))[:9]  # 3 rounds of 3 cells at once
    FakeLink.made = []
    seen: list = []
    result = run_sweep(cells, tmp_path, gpus=[0, 1, 2], progress=False, link_factory=FakeLink,
                       execute=_fake_execute(threading.Barrier(3), seen))
    assert sorted(k for k, _, _ in seen) == sorted(c.key for c in cells)  # each cell exactly once
    assert {w for _, w, _ in seen} == {"gpu0", "gpu1", "gpu2"}
    assert all(label == f"gpu{dev}" for _, label, dev in seen)  # a worker's SuperLink sees only its GPU
    assert sorted(link.env["CUDA_VISIBLE_DEVICES"] for link in FakeLink.made) == ["0", "1", "2"]
    assert all(link.entered == link.exited == 1 for link in FakeLink.made)
    assert len(result.computed) == 9 and not result.reused and not result.failed
    assert [o.cell.key for o in result.outcomes] == [c.key for c in cells]  # reported in table order
    assert len(CellStore(tmp_path)) == 9


def test_sweep_reuses_the_store_retries_failures_and_forces(tmp_path):
    cells = smoke_cells(("gradinv",))
    seen: list = []
    first = run_sweep(cells, tmp_path, gpus=[], progress=False, link_factory=FakeLink,
                      execute=_fake_execute(None, seen, fail={cells[1].key}))
    assert len(first.computed) == 4 and [o.cell.key for o in first.failed] == [cells[1].key]
    assert {w for _, w, _ in seen} == {"cpu"} and cells[1].key not in CellStore(tmp_path)
    seen.clear()
    second = run_sweep(cells + cells[:2], tmp_path, gpus=[0, 1], progress=False, link_factory=FakeLink,
                       execute=_fake_execute(None, seen))
    assert [k for k, _, _ in seen] == [cells[1].key]  # only the failed cell runs again
    assert len(second.reused) == 4 and len(second.computed) == 1
    seen.clear()
    forced = run_sweep(cells[:2], tmp_path, gpus=[], force=True, progress=False, link_factory=FakeLink,
                       execute=_fake_execute(None, seen))
    assert sorted(k for k, _, _ in seen) == sorted(c.key for c in cells[:2]) and len(forced.computed) == 2


# ----------------------------------------------------------------------------- tables from hand-made records
def by(rows, *columns):
    """Rows of a table frame as dicts, keyed by ``columns``."""
    return {tuple(r[c] for c in columns) if len(columns) > 1 else r[columns[0]]: r for r in rows.to_dict("records")}


def test_table1_mean_std_and_percent_of_sgd():
    cells = smoke_cells(("gradinv",), algos=parse_algorithms("sgd,powersgd1,topk1", ()))
    values = {"sgd": ([0.8, 0.6, 0.4], [0.8, 0.6, 0.4]), "powersgd1": ([0.1, 0.3, 0.2], [0.5, 0.7, 0.6]),
              "topk1": ([0.05, 0.05, 0.2], [0.3, 0.3, 0.3])}
    records = {c.key: fake_record(c, ssim={"naive": values[c.algorithm.key][0],
                                           "adaptive": values[c.algorithm.key][1]}) for c in cells}
    rows = table1_frame(cells, records)
    get = by(rows, "attacker", "algorithm")
    assert get["naive", "sgd"]["ssim_mean"] == pytest.approx(0.6)
    assert get["naive", "sgd"]["ssim_std"] == pytest.approx(np.std([0.8, 0.6, 0.4]))  # population std
    assert get["naive", "sgd"]["pct_of_sgd"] == pytest.approx(100.0)
    assert get["naive", "powersgd1"]["pct_of_sgd"] == pytest.approx(100 * 0.2 / 0.6)
    assert get["naive", "topk1"]["ssim_mean"] == pytest.approx(0.1) and get["naive", "topk1"]["n"] == 3
    assert get["adaptive", "powersgd1"]["pct_of_sgd"] == pytest.approx(100.0)  # baseline per attacker
    md = table1_markdown(rows)
    naive = md.split("**Adaptive")[0]
    assert naive.index("Original SGD") < naive.index("PowerSGD (Rank 1)") < naive.index("Top-K SGD (Level 1)*")
    assert "| PowerSGD (Rank 1) | 0.2000 | [0.100, 0.300] | 0.0816 | 33.33% | 3 |" in naive
    # the interval is the percentile bootstrap of the mean: within the values' range, around the mean
    sgd = get["naive", "sgd"]
    assert 0.4 - 1e-9 <= sgd["ssim_low"] < sgd["ssim_mean"] < sgd["ssim_high"] <= 0.8 + 1e-9
    assert sgd["labels"] == "given" and "given the true labels" in labels_caption(rows)
    # a missing cell shows as n/a, not as a number
    rows = table1_frame(cells, {k: v for k, v in records.items() if k != cells[2].key})
    missing = by(rows, "attacker", "algorithm")["naive", "topk1"]
    assert pd.isna(missing["ssim_mean"]) and missing["status"] == "missing"
    assert "| Top-K SGD (Level 1)* | n/a | n/a | n/a | n/a | 0 |" in table1_markdown(rows)


def test_table_statistics_are_numpys_to_the_bit():
    """Means and stds over many images are numpy's (pairwise sums), as the tables always had them."""
    rng = np.random.default_rng(7)
    cells = smoke_cells(("gradinv",), algos=parse_algorithms("sgd,topk1", ()))
    values = {c.key: np.round(rng.random(13), 6).tolist() for c in cells}
    records = {c.key: fake_record(c, ssim={"naive": values[c.key], "adaptive": values[c.key][:9]}) for c in cells}
    get = by(table1_frame(cells, records), "attacker", "cell")
    for c in cells:
        assert get["naive", c.key]["ssim_mean"] == float(np.mean(values[c.key]))
        assert get["naive", c.key]["ssim_std"] == float(np.std(values[c.key], ddof=0))
        assert get["adaptive", c.key]["ssim_mean"] == float(np.mean(values[c.key][:9]))
    sgd, topk = (get["naive", c.key] for c in cells)
    assert topk["pct_of_sgd"] == 100.0 * topk["ssim_mean"] / sgd["ssim_mean"]


def test_table2_picks_the_papers_attacks_and_averages_update_attacks():
    from experiments.tables import table2_markdown

    cells = smoke_cells(("mia", "update"), algos=parse_algorithms("sgd,topk1", ()))
    records = {}
    for c in cells:
        if c.kind == "mia":
            acc = 0.6 if c.algorithm.baseline else 0.55
            mia = [mia_result(a, s, acc + i * 0.01, 0.7, round_=r) for i, a in
                   enumerate(("confidence", "loss", "entropy", "modified_entropy"))
                   for s in ("global", "per_class") for r in (5,)]
            mia.append(mia_result("loss", "global", 0.99, 0.99, round_=2))  # an earlier round is not the result
        else:
            mia = [mia_result(a, "update", 0.7, auc, round_=1, members=8, nonmembers=100)
                   for a in ("update_cosine", "update_regression") for auc in (0.6, 0.8)]
        records[c.key] = fake_record(c, mia=mia)
    rows = table2_frame(cells, records)
    get = by(rows, "algorithm", "attack", "scope")
    sgd_loss = get["sgd", "loss", "global"]
    assert sgd_loss["accuracy"] == pytest.approx(0.61) and sgd_loss["round"] == 5
    reg = get["topk1", "update_regression", "update"]
    assert reg["auc"] == pytest.approx(0.7) and reg["n"] == 2 and reg["auc_std"] == pytest.approx(0.1)
    assert get["topk1", "update_cosine_aware", "update"]["status"] == "missing"
    assert list(rows["source"]) == ["blackbox"] * 12 + ["update"] * 4 + ["blackbox"] * 12 + ["update"] * 4
    # cells without the attacker's thresholds (written before the scope existed): no Table 2f
    assert "Table 2f" not in table2_markdown(rows) and "Table 2c" in table2_markdown(rows)
    for c in cells:
        if c.kind == "mia":
            mia = [*records[c.key].summary.attacks, mia_result("loss", "nonmember", 0.52, 0.7)]
            records[c.key] = fake_record(c, mia=mia)
    text = table2_markdown(table2_frame(cells, records))
    block = text[text.index("Table 2f"):]
    assert "5% FPR" in block.splitlines()[0]
    sgd = next(ln for ln in block.splitlines() if "Original SGD" in ln)
    assert "52.00% [47.6, 56.4]" in sgd and "n/a" in sgd  # the loss attack's attacker threshold; the others not run


def test_table2_shows_lira_and_rmia_beside_the_loss_attack_when_cells_ran_them():
    from experiments.tables import table2_markdown

    cells = smoke_cells(("mia",), algos=parse_algorithms("sgd,topk1", ()))
    records = {}
    for c in cells:
        mia = [mia_result(a, s, 0.55, 0.6) for a in ("confidence", "loss", "entropy", "modified_entropy")
               for s in ("global", "per_class")]
        if c.algorithm.baseline:  # only the SGD cell ran reference models (8, and RMIA with 2 as well)
            ci = {"auc_low": 0.7, "auc_high": 0.8, "tpr_at_1pct_fpr_low": 0.05, "tpr_at_1pct_fpr_high": 0.2,
                  "threshold": "shadow", "resamples": 1000}
            mia += [replace(mia_result("lira_online", "reference", 0.66, 0.75), reference_models=8, **ci),
                    replace(mia_result("rmia_online", "reference", 0.6, 0.74), reference_models=8, **ci),
                    replace(mia_result("rmia_online", "reference", 0.6, 0.71), reference_models=2, **ci)]
        records[c.key] = fake_record(c, mia=mia)
    rows = table2_frame(cells, records)
    ref = rows[rows["source"] == "reference"]
    assert set(ref["algorithm"]) == {"sgd"} and sorted(ref["reference_models"]) == [2, 8, 8]
    text = table2_markdown(rows)
    assert "Table 2e" in text
    line = next(ln for ln in text.splitlines() if "Table 2e" in ln)
    block = text[text.index(line):]
    sgd = next(ln for ln in block.splitlines() if "Original SGD" in ln)
    assert "0.750 [0.700, 0.800]" in sgd and "0.710 [0.700, 0.800]" in sgd  # LiRA with 8, RMIA with the fewest (2)
    assert "| 8 |" in sgd and "| 2 |" in sgd
    # cells without reference models: no Table 2e at all
    plain = {k: fake_record(c, mia=[m for m in v.summary.attacks if m.scope != "reference"])
             for c in cells for k, v in records.items() if k == c.key}
    assert "Table 2e" not in table2_markdown(table2_frame(cells, plain))


def test_tradeoff_rows_join_gradinv_and_mia_cells():
    from experiments.tables import tradeoff_markdown

    cells = smoke_cells(("gradinv", "mia"), algos=parse_algorithms("sgd,topk4", ()))
    records = {}
    for c in cells:
        if c.kind == "gradinv":
            records[c.key] = fake_record(c, ssim={"naive": [0.5], "adaptive": [0.9]}, uplink=5.0)
        else:
            mia = [mia_result("loss", "global", 0.52, 0.55), mia_result("entropy", "global", 0.52, 0.56)]
            if c.algorithm.baseline:  # the SGD cell also ran RMIA, stronger than every threshold attack
                mia.append(replace(mia_result("rmia_online", "reference", 0.6, 0.74), reference_models=8))
            records[c.key] = fake_record(c, accuracy=0.7, uplink=1000.0 if c.algorithm.level else 4000.0, mia=mia)
    frame = tradeoff_frame(cells, records)
    rows = by(frame, "algorithm")
    assert rows["sgd"]["mia_auc_strongest"] == 0.74 and rows["sgd"]["mia_strongest_attack"] == "rmia_online (8 ref.)"
    assert rows["topk4"]["mia_auc_strongest"] == 0.56 and rows["topk4"]["mia_strongest_attack"] == "entropy"
    assert "0.740 (rmia_online (8 ref.))" in tradeoff_markdown(frame)
    assert rows["topk4"]["uplink_bytes_per_client_round"] == 1000.0  # from the trained (mia) run
    assert rows["topk4"]["compression"] == pytest.approx(4.0) and rows["sgd"]["compression"] == pytest.approx(1.0)
    assert rows["sgd"]["ssim_adaptive"] == 0.9 and rows["sgd"]["mia_auc_loss"] == 0.55
    assert rows["sgd"]["test_accuracy"] == 0.7 and rows["sgd"]["status"] == "ok"
    # without its mia record, a row takes its traffic from the gradinv run and is missing
    mia_sgd = next(c for c in cells if c.kind == "mia" and c.algorithm.baseline)
    rows = by(tradeoff_frame(cells, {k: v for k, v in records.items() if k != mia_sgd.key}), "algorithm")
    assert rows["sgd"]["uplink_bytes_per_client_round"] == 5.0 and rows["sgd"]["status"] == "missing"
    assert pd.isna(rows["sgd"]["test_accuracy"]) and pd.isna(rows["sgd"]["mia_auc_loss"])


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8), mode="L").save(path)


def test_tradeoff_from_a_full_store_runs_nothing_and_writes_every_file(tmp_path, capsys):
    out = tmp_path / "out"
    algos = "sgd,powersgd1,topk1"
    cells = build_cells(SMOKE, ("gradinv", "mia"), ("sample",), parse_algorithms(algos, ()))
    store = CellStore(out)
    for c in cells:
        run_dir = out / "runs" / c.name
        if c.kind == "gradinv":
            for i in range(3):
                _png(run_dir / "gradinv" / f"round1_client{i}_original_0.png", 200)
                for attacker in ("naive", "adaptive"):
                    _png(run_dir / "gradinv" / f"round1_client{i}_{attacker}_0.png", 100)
            rec = fake_record(c, f"runs/{c.name}", ssim={"naive": [0.3, 0.2, 0.1], "adaptive": [0.5, 0.4, 0.3]})
        else:
            rec = fake_record(c, f"runs/{c.name}", mia=[mia_result("loss", "global", 0.55, 0.6)])
        store.add(rec)

    def no_flower(worker, root):
        raise AssertionError("a reused cell must not start a SuperLink")

    assert tradeoff.main(["--algorithms", algos, "--out", str(out), "--no-progress"], link_factory=no_flower) == 0
    printed = capsys.readouterr().out
    assert "0 computed, 6 reused, 0 failed" in printed
    for name in ("tradeoff.csv", "tradeoff.md", "tradeoff.tex", "tradeoff.json", "tradeoff.png"):
        assert (out / name).stat().st_size > 100, name
        assert str(out / name) in printed
    side = json.loads((out / "tradeoff.json").read_text())
    assert side["seeds"] == [42] and len(side["cells"]) == 6 and side["cells"][0]["run_config"]["model"] == "convnet"
    assert "Seed 42" in (out / "tradeoff.md").read_text() and "Seed 42" in (out / "tradeoff.tex").read_text()
    assert table1.main(["--algorithms", algos, "--out", str(out), "--no-progress"], link_factory=no_flower) == 0
    assert (out / "figure1.png").stat().st_size > 5000 and (out / "figure1_adaptive.png").stat().st_size > 5000
    # the results travel: no file names the folder they were made in (but for the command that made them)
    for name in ("tradeoff.csv", "table1.csv"):
        assert str(tmp_path) not in (out / name).read_text(), name
    for name in ("tradeoff.json", "table1.json", "table1.md", "table1.tex"):
        assert str(out / "runs") not in (out / name).read_text() and str(out / "table1") not in (out / name).read_text()
    table = (out / "table1.csv").read_bytes().decode()
    assert ",runs/gradinv-sample-sgd-" in table and table.count("\r\n") == 7  # header + 2 attackers x 3
    assert side["files"][:3] == ["tradeoff.csv", "tradeoff.md", "tradeoff.tex"]
    assert side["cells"][0]["run_dir"] == f"runs/{cells[0].name}"


def test_estimate_multiplies_measured_times_by_the_profiles_work(tmp_path):
    from experiments.estimate import Timings, cell_seconds, overhead_from

    t = Timings(attack_iteration=0.5, train_step=2.0, sample_gradient=3.0)
    per = cell_seconds(PAPER, "cifar10", t)
    assert per["gradinv"] == 24000 * 0.5  # every reconstruction of a cell advances together per iteration
    assert per["mia"] == 50 * 1 * math.ceil(50_000 / 32) * 2.0  # rounds x epochs x batches of the train split
    assert per["update"] == 10 * 1000 * 3.0  # intercepted clients x candidates
    with pytest.raises(ValueError, match="train-split size"):
        cell_seconds(PAPER, "folder:/x", t)
    store = CellStore(tmp_path)
    cell = smoke_cells(("mia",))[0]
    store.add(replace(fake_record(cell), key="a", seconds=80.5))
    store.add(replace(fake_record(cell), key="b", seconds=41.0))
    store.add(CellRecord(key="c", status="failed", seconds=3.0))  # not a result
    assert overhead_from(tmp_path) == 41.0 and overhead_from(None) is None


def test_estimate_times_real_work_on_this_machine(capsys):
    from experiments.estimate import main

    assert main(["--profile", "smoke", "--device", "cpu", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "sample" in out and "total: table1 (gradinv)" in out


# ----------------------------------------------------------------------------- real runs: stop, kill, resume
SCENARIO_ARGS = ["--algorithms", "sgd,powersgd1,topk1", "--set", "attack-iterations=5", "--set", "num-supernodes=2",
                 "--set", "eval-samples=50", "--no-progress"]


def make_image_folder(root: Path, classes: int = 3, per_class: int = 20) -> Path:
    """An ImageFolder tree (one sub-folder per class) of real Fashion-MNIST images from the sample."""
    from PIL import Image

    from fedtrust.data import load_dataset

    train = load_dataset("sample", "train")
    for label in range(classes):
        idx = np.flatnonzero(train.labels == label)[:per_class]
        (root / f"class{label}").mkdir(parents=True)
        for i in idx:
            Image.fromarray(train.images[i][:, :, 0], mode="L").save(root / f"class{label}" / f"{i}.png")
    return root


def _sweep_roots(pid: int) -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob(f"fedtrust-sweep-{pid}-*"))


def _start(out: Path, dataset: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.table1", "--datasets", dataset, "--out", str(out),
                             *SCENARIO_ARGS], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def _wait_until_second_cell_starts(proc: subprocess.Popen, out: Path, finished: int, timeout: float = 400.0) -> Path:
    """Wait for ``finished`` records and the run folder (config.json) of a cell without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        done = {r["name"] for r in read_jsonl(out / "cells.jsonl")}
        if len(done) >= finished:
            running = [p for p in (out / "runs").glob("*") if p.name not in done and (p / "config.json").exists()]
            if running:
                return running[0]
        time.sleep(0.5)
    raise AssertionError("the sweep did not get that far in time")


def _superlinks_of(pid: int) -> list[int]:
    return [p for root in _sweep_roots(pid) for p in processes_under(root)]


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, list[int]]:
    """Signal the sweep's process group; return its exit code and the SuperLink pids it had."""
    assert _superlinks_of(proc.pid), "the sweep has no SuperLink running"
    pids = _superlinks_of(proc.pid)
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=60)
    return code, pids


def _assert_nothing_left(pid: int, pids: list[int], timeout: float = 60.0) -> None:
    from experiments.processes import alive

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (any(alive(p) for p in pids) or _sweep_roots(pid)):
        time.sleep(0.5)
    assert not [p for p in pids if alive(p)], "SuperLink processes outlived the sweep"
    assert not _sweep_roots(pid), "the sweep's FLWR_HOME folder was left behind"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """table1 on a folder dataset: SIGTERM in cell 2, SIGKILL in cell 3, then a rerun to the end."""
    base = tmp_path_factory.mktemp("scenario")
    dataset = f"folder:{make_image_folder(base / 'images')}"
    out = base / "out"
    facts: dict = {"out": out, "dataset": dataset}

    proc = _start(out, dataset)
    partial = _wait_until_second_cell_starts(proc, out, finished=1)
    first = read_jsonl(out / "cells.jsonl")[0]
    facts["first"] = first
    facts["first_mtimes"] = {p.name: p.stat().st_mtime_ns for p in (out / first["run_dir"]).iterdir()}
    facts["term_code"], pids = _stop(proc, signal.SIGTERM)
    _assert_nothing_left(proc.pid, pids)
    facts["term_partial"] = (partial.name, json.loads((partial / "config.json").read_text())["run_id"])

    proc = _start(out, dataset)
    partial = _wait_until_second_cell_starts(proc, out, finished=2)
    facts["second_records"] = read_jsonl(out / "cells.jsonl")
    facts["kill_partial"] = (partial.name, json.loads((partial / "config.json").read_text())["run_id"])
    facts["kill_code"], pids = _stop(proc, signal.SIGKILL)
    _assert_nothing_left(proc.pid, pids)  # the guard stops what SIGKILL left

    facts["final_code"] = table1.main(["--datasets", dataset, "--out", str(out), *SCENARIO_ARGS])
    facts["records"] = read_jsonl(out / "cells.jsonl")
    return facts


@pytest.mark.slow
def test_stopped_sweeps_keep_finished_cells_and_leave_no_superlink(scenario):
    assert scenario["term_code"] == 128 + signal.SIGTERM
    assert scenario["kill_code"] == -signal.SIGKILL
    assert scenario["final_code"] == 0
    records = scenario["records"]
    # three cells, each recorded exactly once: nothing finished was computed again
    assert len(records) == 3 and len({r["key"] for r in records}) == 3
    assert records[0] == scenario["first"] and records[:2] == scenario["second_records"]
    first_dir = scenario["out"] / scenario["first"]["run_dir"]
    assert {p.name: p.stat().st_mtime_ns for p in first_dir.iterdir()} == scenario["first_mtimes"]


@pytest.mark.slow
def test_interrupted_cells_are_redone_from_scratch(scenario):
    by_name = {r["name"]: r for r in scenario["records"]}
    for name, old_run_id in (scenario["term_partial"], scenario["kill_partial"]):
        rec = by_name[name]  # the interrupted cell has a record now ...
        folder = scenario["out"] / rec["run_dir"]
        assert rec["run_dir"] == f"runs/{name}" and rec["log"] == f"runs/{name}/flwr.log"
        assert json.loads((folder / "config.json").read_text())["run_id"] == rec["run_id"] != old_run_id
        assert not list(folder.parent.glob(f"{name}-*")), "a partial folder was kept beside the new one"


@pytest.mark.slow
def test_resumed_table1_writes_every_file_for_a_folder_dataset(scenario):
    out = scenario["out"]
    for name in ("table1.csv", "table1.md", "table1.tex", "table1.json", "figure1.png", "figure1_adaptive.png"):
        assert (out / name).stat().st_size > 100, name
    md = (out / "table1.md").read_text()
    assert "folder:images Mean" in md and "Original SGD" in md and "Top-K SGD (Level 1)*" in md
    rows = [r for r in (out / "table1.csv").read_text().splitlines()[1:] if r]
    assert len(rows) == 6  # 3 algorithms x 2 attackers
    for rec in scenario["records"]:
        images = rec["summary"]["gradinv"]["images"]
        assert len(images) == 4 and {im["attacker"] for im in images} == {"naive", "adaptive"}
        assert all(-1.0 <= im["ssim"] <= 1.0 and im["iterations"] == 5 for im in images)
        assert rec["run_config"]["dataset"].startswith("folder:/") and rec["num_supernodes"] == 2
        assert rec["summary"]["rounds"]["rounds"] == 1 and math.isfinite(rec["summary"]["rounds"]["test_accuracy"])


@pytest.mark.slow
@pytest.mark.extended
def test_a_forced_cell_keeps_its_result_until_the_new_run_succeeds(scenario):
    """--force on a finished cell: a new run that fails (here: past --timeout) loses nothing."""
    out, dataset = scenario["out"], scenario["dataset"]
    old = next(r for r in CellStore(out) if r.algorithm == "sgd")
    old_dir = old.run_path(out)
    files = {p: p.read_bytes() for p in old_dir.rglob("*.png")}
    assert files, "the cell's reconstructions (what Figure 1 reads) should be there"
    args = ["--datasets", dataset, "--out", str(out), *SCENARIO_ARGS, "--algorithms", "sgd", "--force"]
    assert table1.main([*args, "--timeout", "1"]) != 0  # the forced run fails
    assert CellStore(out).get(old.key) == old and old_dir.is_dir()
    assert {p: p.read_bytes() for p in old_dir.rglob("*.png")} == files
    assert table1.main(args) == 0  # a forced run that succeeds replaces the old result
    new = CellStore(out).get(old.key)
    assert new.run_dir != old.run_dir and new.ok and new.run_path(out).is_dir()
    assert not old_dir.exists()
    assert (out / "figure1.png").stat().st_size > 100


def test_table1_with_given_labels_beside_inferred_ones(tmp_path):
    """The caption says which labels a Table 1 used, and compare_labels puts the two sweeps side by side
    (refusing a file whose cells used the other setting)."""
    from experiments import compare_labels
    from experiments.tables import TABLE1, write_csv

    algos = parse_algorithms("sgd,topk1", ())
    files = {}
    for setting, overrides, shift in (("given", (), 0.0), ("infer", ("gradinv:attack-labels='infer'",), 0.1)):
        cells = smoke_cells(("gradinv",), algos=algos, overrides=overrides)
        records = {c.key: fake_record(c, ssim={"naive": [0.5 - shift, 0.7 - shift], "adaptive": [0.8, 0.9]})
                   for c in cells}
        rows = table1_frame(cells, records)
        assert set(rows["labels"]) == {setting}
        assert ("given the true labels" if setting == "given" else "inferred them") in TABLE1.full_caption(rows)
        files[setting] = write_csv(tmp_path / f"{setting}.csv", rows, TABLE1.columns)
    argv = ["--given", str(files["given"]), "--inferred", str(files["infer"]), "--out", str(tmp_path)]
    assert compare_labels.main(argv) == 0
    text = (tmp_path / "table1_labels.md").read_text()
    assert "naive, labels given | naive, labels inferred | adaptive, labels given | adaptive, labels inferred" in text
    assert "| Original SGD | 0.600 [0.500, 0.700] | 0.500 [0.400, 0.600] | 0.850 [0.800, 0.900] |" in text
    with pytest.raises(ValueError, match="attack-labels"):
        compare_labels.main(["--given", str(files["infer"]), "--inferred", str(files["infer"]), "--out", str(tmp_path)])

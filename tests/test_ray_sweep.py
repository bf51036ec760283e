"""Sweeps on a Ray cluster: a real local cluster (a head and a worker node on loopback), a tiny
Table 1 sweep whose cells run as Ray tasks, one dataset failing on the cluster and then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import ray_cells
from experiments.flwr_runner import REPO_ROOT, free_port
from experiments.processes import terminate, with_text
from experiments.sweep import Worker, federation_config

pytestmark = pytest.mark.slow


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_node(args: list[str], env: dict[str, str]) -> None:
    started = subprocess.run([ray_bin(), "start", *args], env=env, capture_output=True, text=True, timeout=180,
                             check=False)
    assert started.returncode == 0, started.stdout + started.stderr


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` plus one worker node, 1 CPU each, on 127.0.0.1; stopped by PID afterwards
    (every process whose command line names this cluster's temporary folder)."""
    root = Path(tempfile.mkdtemp(prefix="ftray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats"]
    try:
        start_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(root),
                    "--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port()),
                    "--metrics-export-port", str(free_port()), *common], env)
        start_node(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                    "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                    *common], env)
        yield f"127.0.0.1:{port}", env
    finally:
        terminate(extra_pids=with_text(str(root)))
        assert not with_text(str(root)), "a process of the test's Ray cluster outlived it"
        subprocess.run(["rm", "-rf", str(root)], check=False)


def write_image_folder(folder: Path, per_class: int = 12) -> None:
    """A two-class ImageFolder tree of real photos (scikit-image's), cropped to 32x32 tiles."""
    from skimage import data

    rng = np.random.default_rng(0)
    for name, photo in (("astronaut", data.astronaut()), ("coffee", data.coffee())):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y, x = rng.integers(0, 300, 2)
            Image.fromarray(np.ascontiguousarray(photo[y:y + 96:3, x:x + 96:3])).save(folder / name / f"{i}.png")


def sweep(address: str, env: dict[str, str], out: Path, images: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "experiments.table1", "--profile", "smoke", "--out", str(out),
            "--datasets", f"sample,folder:{images}", "--algorithms", "sgd,topk1", "--no-progress",
            "--set", "num-supernodes=2", "--set", "attack-iterations=5", "--set", "eval-samples=20",
            "--ray-address", address]
    return subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500, check=False)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_a_sweep_runs_on_the_cluster_and_resumes_after_a_failed_cell(cluster, tmp_path):
    address, env = cluster
    out, images = tmp_path / "sweep", tmp_path / "images"
    images.mkdir()  # exists (the driver's check passes) but holds no class folder: the cells fail on the cluster
    first = sweep(address, env, out, images)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Ray cluster" in first.stdout and "2 CPUs" in first.stdout
    done = records(out / "cells.jsonl")
    failed = records(out / "failed.jsonl")
    assert sorted(r["dataset"] for r in done) == ["sample", "sample"] and all(r["status"] == "ok" for r in done)
    assert {r["algorithm"] for r in done} == {"sgd", "topk"}
    assert {r["worker"] for r in done} <= {"ray0", "ray1"}
    assert len(failed) == 2 and all(r["dataset"].startswith("folder:") for r in failed)
    logs = [(out / r["log"]).read_text() for r in failed]
    assert all("has no class sub-folders" in log for log in logs), logs[0][-3000:]  # the data, not Ray
    for r in done:  # the run folders are in the driver's sweep folder, complete
        assert (out / r["run_dir"] / "finished.json").exists() and (out / r["run_dir"] / "gradinv.csv").exists()

    write_image_folder(images)  # the same cells (same keys) can now run
    second = sweep(address, env, out, images)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 computed, 2 reused, 0 failed" in second.stdout
    after = records(out / "cells.jsonl")
    assert len(after) == 4 and len({r["key"] for r in after}) == 4  # nothing lost, nothing repeated
    assert [r for r in after if r["dataset"] == "sample"] == done  # the first sweep's records, untouched
    assert (out / "table1.csv").exists() and not (out / ray_cells.TOKEN_FILE).exists()
    assert not with_text("fedtrust-ray-cell-"), "a cell's SuperLink outlived its task"


def test_a_cell_on_a_node_without_the_sweep_folder_comes_back_as_an_archive(tmp_path):
    """What a task does where ``--out`` is not shared: run into scratch, pack, and the driver unpacks."""
    runs = tmp_path / "sweep" / "runs"
    cfg = {"model": "convnet", "num-server-rounds": 1, "eval-samples": 20, "compressor": "topk", "level": 1,
           "attack": "none", "mia": False, "intercept-rounds": "none", "output-dir": str(runs), "run-name": "cell"}
    ran = ray_cells.run_cell_task(str(REPO_ROOT), cfg, 2, {}, 600, token="not-the-drivers-token")
    assert ran.ok and ran.archive is not None and not runs.exists()
    ray_cells.unpack(ran.archive, runs)
    assert (runs / "cell" / "finished.json").exists() and (runs / "cell" / "rounds.csv").exists()
    assert json.loads((runs / "cell" / "config.json").read_text())["config"]["run-name"] == "cell"


def test_a_ray_slot_sizes_the_simulation_to_what_its_task_holds():
    cpu = Worker(0, None, remote=True, cell_cpus=2.0, cell_gpus=0.0)
    gpu = Worker(1, None, remote=True, cell_cpus=4.0, cell_gpus=1.0)
    assert federation_config(cpu, 0.25) == {"init-args-num-cpus": 2, "client-resources-num-cpus": 1}
    assert federation_config(gpu, 0.25) == {"init-args-num-cpus": 4, "client-resources-num-cpus": 1,
                                            "init-args-num-gpus": 1, "client-resources-num-gpus": 0.25}
    assert ray_cells.slots({"CPU": 16.0, "GPU": 4.0}, 2.0, 1.0) == 4
    assert ray_cells.slots({"CPU": 2.0}, 1.0, 0.0) == 2 and ray_cells.slots({"CPU": 1.0}, 4.0, 0.0) == 1
    with pytest.raises(ValueError, match="--cell-cpus"):
        ray_cells.RayOptions("auto", cell_cpus=0)

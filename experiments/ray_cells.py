"""Run a sweep's cells as Ray tasks on an existing Ray cluster (``--ray-address``).

The local sweep (:mod:`experiments.sweep`) has one worker thread per GPU, each with its
own :class:`~experiments.flwr_runner.LocalSuperLink`. With ``--ray-address`` the workers
are *slots* of a Ray cluster instead: each cell becomes one Ray task that reserves
``--cell-gpus`` GPUs (default: 1 where the cluster has GPUs, else 0) and ``--cell-cpus``
CPUs and runs, on whichever node Ray places it, what a local worker runs: a private
``LocalSuperLink`` and one ``flwr run`` of the app. Everything else is the local sweep's:
the driver plans the cells, reuses the ones in the store, shows progress, stores each
record the moment its cell is back, and keeps failures in ``failed.jsonl``, so resume
and failure handling are exactly the same.

Three things make a cell a good Ray citizen:

* **The driver's code.** The app is shipped with Ray's ``runtime_env`` ``working_dir``
  (the repository, without ``.git``, ``.venv`` and ``results``), so every node runs the
  commit the driver runs; the nodes need only the same Python environment
  (``pip install -e .`` of the same version).
* **Its own simulation.** Flower's simulation engine is Ray too: started inside a task of
  a node of the cluster, ``ray.init()`` would join that cluster and ask it for the client
  resources the cell's task already holds. The task's SuperLink runs with
  ``RAY_ADDRESS=local``, so its simulation starts a Ray instance of its own on that node,
  sized to what the task reserved (``init-args-num-cpus``/``-num-gpus`` of the federation
  config, :func:`experiments.sweep.federation_config`) and seeing only the GPUs Ray gave the task (``CUDA_VISIBLE_DEVICES``).
* **Results on the driver.** When the sweep folder is shared (the task finds the token
  the driver wrote in ``--out`` at the same path), the run writes there directly;
  otherwise it writes to a temporary folder on its node, which comes back to the driver
  as a tar archive and is unpacked into ``<out>/runs/<name>``. A task that is cancelled,
  or whose node dies, leaves no SuperLink behind (a guard process stops it) and counts
  as a failed cell.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import secrets
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from experiments.flwr_runner import REPO_ROOT
from experiments.sweep import Link, Worker

#: The file in the sweep folder whose content tells a task that it sees the driver's folder.
TOKEN_FILE = ".fedtrust-ray-token"
#: What the app's ``working_dir`` leaves out (besides what ``.gitignore`` ignores).
EXCLUDES = ("results", "**/__pycache__", "*.egg-info")
#: Seconds the driver waits beyond the cell's timeout (the task's start, SuperLink, transfer).
MARGIN_S = 300.0


@dataclass(frozen=True)
class RayOptions:
    """How the sweep uses the cluster.

    Attributes
    ----------
    address:
        The cluster (``ray://host:10001``, ``host:6379`` or ``auto``), as ``ray.init`` takes it.
    cell_gpus:
        GPUs each cell's task reserves; ``None``: 1 where the cluster has GPUs, else 0.
    cell_cpus:
        CPUs each cell's task reserves (its simulation's Ray instance gets as many).
    """

    address: str
    cell_gpus: float | None = None
    cell_cpus: float = 1.0

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("--ray-address is empty; give the cluster's address (host:6379, ray://host:10001, auto)")
        if self.cell_gpus is not None and self.cell_gpus < 0:
            raise ValueError(f"--cell-gpus must be >= 0, got {self.cell_gpus}")
        if self.cell_cpus <= 0:
            raise ValueError(f"--cell-cpus must be > 0, got {self.cell_cpus}")


@dataclass
class RemoteRun:
    """What a cell's task sends back: ``flwr run``'s outcome, where it ran, and the run folder
    as a tar archive (``None`` when it wrote into the shared sweep folder)."""

    run_id: int | None
    status: str
    details: str
    log: str
    host: str
    archive: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def slots(resources: Mapping[str, float], cell_cpus: float, cell_gpus: float) -> int:
    """How many cells the cluster's ``resources`` run at once (at least 1)."""
    by_cpu = math.floor(resources.get("CPU", 0.0) / cell_cpus)
    by_gpu = math.floor(resources.get("GPU", 0.0) / cell_gpus) if cell_gpus > 0 else by_cpu
    return max(1, min(by_cpu, by_gpu))


def _sees_driver_folder(out: Path, token: str) -> bool:
    try:
        return (out / TOKEN_FILE).read_text() == token
    except OSError:
        return False


def pack(folder: Path) -> bytes:
    """A run folder as a gzip'd tar archive (its name as the archive's top folder)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def unpack(archive: bytes, into: Path) -> None:
    """Unpack :func:`pack`'s archive into ``into`` (only plain files and folders under it)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")


def run_cell_task(app: str | None, run_config: Mapping[str, Any], num_supernodes: int,
                  federation_config: Mapping[str, Any], timeout: float, token: str) -> RemoteRun:
    """The body of a cell's Ray task: one ``flwr run`` on a private SuperLink of this node.

    ``run_config["output-dir"]`` is the driver's ``<out>/runs``; when this node does not
    see the driver's sweep folder, the run goes to a temporary folder and comes back packed.
    """
    from experiments.flwr_runner import LocalSuperLink
    from experiments.guard import clean, start_guard

    runs = Path(run_config["output-dir"])
    shared = _sees_driver_folder(runs.parent, token)
    scratch = Path(tempfile.mkdtemp(prefix="fedtrust-ray-cell-"))
    guard = start_guard(scratch)  # stops the SuperLink if this task's process is killed (cancel, node loss)
    try:
        cfg = dict(run_config) if shared else {**run_config, "output-dir": str(scratch / "runs")}
        with LocalSuperLink(flwr_home=scratch / "flwr-home", env={"RAY_ADDRESS": "local"}) as link:
            ran = link.run_app(app or os.getcwd(), run_config=cfg, num_supernodes=num_supernodes,
                               federation_config=federation_config, timeout=timeout)
        folder = Path(cfg["output-dir"]) / str(run_config["run-name"])
        archive = pack(folder) if not shared and folder.is_dir() else None
        return RemoteRun(ran.run_id, ran.status, ran.details, ran.log, platform.node(), archive)
    finally:
        guard.terminate()
        guard.wait(timeout=10)
        clean(scratch)


class RayLink:
    """A sweep worker's :class:`~experiments.sweep.Link` whose runs are Ray tasks.

    ``run_app`` submits the cell's task with the worker's resources, waits for it (the
    cell's timeout plus :data:`MARGIN_S`; then the task is cancelled), unpacks a returned
    run folder into ``output-dir`` and returns the outcome. Ray's own failures (a task
    that crashed, a node that died) raise ``RuntimeError``, a cell that failed.
    """

    def __init__(self, cluster: RayCluster, worker: Worker) -> None:
        self.cluster = cluster
        self.worker = worker

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # a task still running when the sweep stops is cancelled by RayCluster.__exit__

    def run_app(self, run_config: Mapping[str, Any] | None = None, num_supernodes: int = 2,
                federation_config: Mapping[str, Any] | None = None, timeout: float = 900) -> RemoteRun:
        import ray
        from ray.exceptions import GetTimeoutError, RayError, RayTaskError

        run_config = dict(run_config or {})
        task = self.cluster.task.options(num_cpus=self.cluster.cell_cpus, num_gpus=self.cluster.cell_gpus,
                                         name=f"fedtrust-cell-{run_config.get('run-name', '')}")
        ref = task.remote(self.cluster.app, run_config, num_supernodes, dict(federation_config or {}),
                          timeout, self.cluster.token)
        self.cluster.pending.add(ref)
        try:
            ran: RemoteRun = ray.get(ref, timeout=timeout + MARGIN_S)
        except GetTimeoutError as err:
            self.cluster.cancel(ref)
            raise TimeoutError(f"Ray task of {run_config.get('run-name')} not back after "
                               f"{timeout + MARGIN_S:.0f}s; cancelled") from err
        except RayTaskError as err:  # the task raised: its own error (TimeoutError, RuntimeError ...)
            cause = err.cause if isinstance(err.cause, Exception) else None
            raise RuntimeError(f"cell task failed on the cluster: {cause!r}") from err
        except RayError as err:  # the worker or its node died, the task was cancelled ...
            raise RuntimeError(f"Ray could not run the cell: {type(err).__name__}: {err}") from err
        finally:
            self.cluster.pending.discard(ref)
        if ran.archive is not None:
            unpack(ran.archive, Path(run_config["output-dir"]))
            ran.archive = None
        return ran


class RayCluster:
    """The driver's connection to a Ray cluster for one sweep, and its worker slots.

    Use as a context manager around :func:`experiments.sweep.run_sweep`: it connects with
    the app as ``working_dir``, writes the sweep folder's token, and disconnects after.
    """

    def __init__(self, options: RayOptions, out: Path, app: Path = REPO_ROOT, ship_app: bool = True) -> None:
        self.options = options
        self.out = Path(out).resolve()
        self.app_root = Path(app)
        self.ship_app = ship_app
        self.token = secrets.token_hex(16)
        self.cell_cpus = options.cell_cpus
        self.cell_gpus = 0.0
        self.app: str | None = None
        self.task: Any = None
        self.resources: dict[str, float] = {}
        #: Cells' tasks not back yet (cancelled when the sweep stops: an interrupt leaves none running).
        self.pending: set[Any] = set()

    def __enter__(self) -> Self:
        import ray

        runtime_env = {"working_dir": str(self.app_root), "excludes": list(EXCLUDES)} if self.ship_app else None
        ray.init(address=self.options.address, runtime_env=runtime_env, log_to_driver=False,
                 logging_level="WARNING", configure_logging=True)
        # shipped: the task's working folder is the app; otherwise every node has it where the driver does
        self.app = None if self.ship_app else str(self.app_root)
        self.resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        has_gpus = self.resources.get("GPU", 0.0) > 0
        self.cell_gpus = float(self.options.cell_gpus if self.options.cell_gpus is not None else (1 if has_gpus else 0))
        if self.cell_gpus > self.resources.get("GPU", 0.0):
            ray.shutdown()
            raise ValueError(f"--cell-gpus {self.cell_gpus:g}: the cluster has {self.resources.get('GPU', 0.0):g} GPUs")
        self.task = ray.remote(max_retries=0)(run_cell_task)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / TOKEN_FILE).write_text(self.token)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for ref in list(self.pending):
            self.cancel(ref)
        (self.out / TOKEN_FILE).unlink(missing_ok=True)
        ray.shutdown()

    def cancel(self, ref: Any) -> None:
        import ray

        with contextlib.suppress(Exception):  # already finished, or the connection is gone
            ray.cancel(ref, force=True)

    def workers(self) -> list[Worker]:
        """One worker per cell the cluster runs at once."""
        count = slots(self.resources, self.cell_cpus, self.cell_gpus)
        return [Worker(i, None, remote=True, cell_cpus=self.cell_cpus, cell_gpus=self.cell_gpus)
                for i in range(count)]

    def link_factory(self, worker: Worker, root: Path) -> Link:
        return RayLink(self, worker)

    def describe(self) -> str:
        cpus, gpus = self.resources.get("CPU", 0.0), self.resources.get("GPU", 0.0)
        return (f"Ray cluster {self.options.address}: {cpus:g} CPUs, {gpus:g} GPUs; each cell "
                f"{self.cell_cpus:g} CPUs, {self.cell_gpus:g} GPUs; {len(self.workers())} at once")


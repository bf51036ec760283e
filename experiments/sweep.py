"""Run a sweep's cells as Flower simulations, one worker per GPU, resumable through the store.

Each worker thread owns one private :class:`~experiments.flwr_runner.LocalSuperLink`
(``CUDA_VISIBLE_DEVICES`` = its GPU) and pulls cells from a shared queue; on a
machine without a GPU there is one CPU worker. A cell is one ``flwr run`` of the
app with ``output-dir = <out>/runs`` and ``run-name = <cell name>``; its record
(full run config, seed, timings, run folder, summary of ``gradinv.csv``,
``mia.csv`` and ``rounds.csv``) is appended to the store the moment it finishes.
Cells already in the store are reused; a cell without a record (interrupted) has
its partial run folder removed and is run again. A cell recomputed with ``--force``
runs into a second folder (``<name>-rerun``, or back into ``<name>``): its old record
and run folder stay until the new run has succeeded and its record is stored, so a
forced run that fails (or is killed) loses nothing.
"""

from __future__ import annotations

import os
import platform
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

from experiments.guard import clean, start_guard
from experiments.profiles import Cell
from experiments.store import CellStore, FolderLock
from experiments.summaries import IncompleteRun, check_config, summarize_run

RUNS_DIR = "runs"


# ------------------------------------------------------------------ workers and devices
@dataclass(frozen=True)
class Worker:
    """One sweep worker: a GPU index (``None``: the CPU) and the environment of its SuperLink."""

    index: int
    gpu: int | None

    @property
    def label(self) -> str:
        return "cpu" if self.gpu is None else f"gpu{self.gpu}"

    @property
    def env(self) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` for its SuperLink (empty for a CPU worker: nothing changed)."""
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": str(self.gpu)}


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process sees (``torch.cuda.device_count()``)."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def make_workers(gpus: Sequence[int]) -> list[Worker]:
    """One worker per GPU, or one CPU worker when there is none."""
    if not gpus:
        return [Worker(0, None)]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"GPU list has duplicates: {list(gpus)}")
    return [Worker(i, int(g)) for i, g in enumerate(gpus)]


def federation_config(worker: Worker, gpu_client_share: float) -> dict[str, Any]:
    """Extra federation config for a worker: each client's GPU share on a GPU worker."""
    return {} if worker.gpu is None else {"client-resources-num-gpus": float(gpu_client_share)}


# ------------------------------------------------------------------ executing one cell
class Link(Protocol):
    """What a worker needs of a SuperLink (``LocalSuperLink`` or a test double)."""

    def run_app(self, run_config: Mapping[str, Any] | None = None, num_supernodes: int = 2,
                federation_config: Mapping[str, Any] | None = None, timeout: float = 900) -> Any: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


LinkFactory = Callable[[Worker, Path], Link]


@dataclass
class CellOutcome:
    """What became of one cell in this sweep."""

    cell: Cell
    status: str  # "computed", "reused" or "failed"
    record: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    worker: str = ""
    #: The run folder of the record this outcome replaces (a forced cell), removed once it is stored.
    replaces: str = ""


RERUN_SUFFIX = "-rerun"


def run_folder(out: Path, cell: Cell, name: str | None = None) -> Path:
    return out / RUNS_DIR / (name or cell.name)


def rerun_name(cell: Cell, previous: Mapping[str, Any] | None) -> str:
    """The run name of a cell's new run: never the folder its stored record points to."""
    if previous and Path(str(previous.get("run_dir", ""))).name == cell.name:
        return cell.name + RERUN_SUFFIX
    return cell.name


def remove_partial(out: Path, cell: Cell, name: str | None = None) -> list[Path]:
    """Remove the run folder(s) ``name`` (default: the cell's) of a run that has no record."""
    base = out / RUNS_DIR
    name = name or cell.name
    removed = []
    candidates = [base / name] + [p for p in base.glob(f"{name}-*")
                                  if p.name[len(name) + 1:].isdigit() and len(p.name) - len(name) <= 5]
    for path in candidates:
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def git_commit() -> str | None:
    """The repository's HEAD commit (``+dirty`` when the tree has changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def execute_cell(link: Link, cell: Cell, out: Path, worker: Worker, *, timeout: float,
                 gpu_client_share: float, script: str, commit: str | None,
                 previous: Mapping[str, Any] | None = None) -> CellOutcome:
    """Run one cell on ``link`` and build its record (or the failure).

    ``previous`` is the cell's stored record when it is recomputed (``--force``): the new
    run then goes to another folder, and the outcome names the old one it replaces.
    """
    name = rerun_name(cell, previous)
    folder = run_folder(out, cell, name)
    remove_partial(out, cell, name)
    run_config = {**cell.run_config, "output-dir": str((out / RUNS_DIR).resolve()), "run-name": name}
    fed = federation_config(worker, gpu_client_share)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    base = {"key": cell.key, "name": cell.name, "kind": cell.kind, "dataset": cell.dataset,
            "algorithm": cell.algorithm.family, "level": cell.algorithm.level, "seed": cell.seed,
            "run_config": run_config, "num_supernodes": cell.num_supernodes, "federation_config": fed,
            "run_dir": str(folder.resolve()), "worker": worker.label, "script": script,
            "fedtrust_commit": commit, "host": platform.node(), "started": started}
    try:
        outcome = link.run_app(run_config=run_config, num_supernodes=cell.num_supernodes,
                               federation_config=fed, timeout=timeout)
    except (TimeoutError, RuntimeError, OSError, subprocess.SubprocessError) as err:
        seconds = time.perf_counter() - t0
        return CellOutcome(cell, "failed", {**base, "status": "error", "error": repr(err), "seconds": seconds},
                           error=repr(err), seconds=seconds, worker=worker.label)
    seconds = time.perf_counter() - t0
    log_path = folder / "flwr.log" if folder.is_dir() else out / "failed" / f"{cell.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(getattr(outcome, "log", "") or "")
    base.update(run_id=getattr(outcome, "run_id", None), flwr_status=outcome.status,
                flwr_details=getattr(outcome, "details", ""), log=str(log_path.resolve()),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(seconds, 3))
    if not outcome.ok:
        error = f"flwr run ended {outcome.status}: {getattr(outcome, 'details', '')}"
        return CellOutcome(cell, "failed", {**base, "status": "failed", "error": error}, error=error,
                           seconds=seconds, worker=worker.label)
    try:
        check_config(folder, cell.run_config)
        summary = summarize_run(folder, cell.kind)
    except (IncompleteRun, OSError, ValueError, KeyError) as err:
        return CellOutcome(cell, "failed", {**base, "status": "incomplete", "error": str(err)}, error=str(err),
                           seconds=seconds, worker=worker.label)
    record = {**base, "status": "ok", "summary": summary}
    old = Path(str(previous.get("run_dir", ""))).resolve() if previous and previous.get("run_dir") else None
    replaces = old if old is not None and old != folder.resolve() and old.parent == folder.resolve().parent else None
    return CellOutcome(cell, "computed", record, seconds=seconds, worker=worker.label,
                       replaces=str(replaces or ""))


# ------------------------------------------------------------------ the sweep
class SweepInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived while the sweep ran.

    Attributes
    ----------
    signum:
        The signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class SweepResult:
    """Every cell of a sweep with what became of it."""

    outcomes: list[CellOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def computed(self) -> list[CellOutcome]:
        return self.by_status("computed")

    @property
    def reused(self) -> list[CellOutcome]:
        return self.by_status("reused")

    @property
    def failed(self) -> list[CellOutcome]:
        return self.by_status("failed")


def plan(cells: Sequence[Cell], store: CellStore, force: bool) -> tuple[list[Cell], list[Cell]]:
    """``(to run, reused)``: unique cells by key; reused ones are in the store (none with ``force``)."""
    unique = list({c.key: c for c in cells}.values())
    if force:
        return unique, []
    return [c for c in unique if c.key not in store], [c for c in unique if c.key in store]


def default_link_factory(worker: Worker, root: Path) -> Link:
    """A private LocalSuperLink for the worker, its ``FLWR_HOME`` under the sweep's guarded folder."""
    from experiments.flwr_runner import LocalSuperLink

    return LocalSuperLink(flwr_home=root / f"worker-{worker.index}-{worker.label}", env=worker.env)


def _close(link: Link | None) -> None:
    if link is not None:
        link.__exit__(None, None, None)


def _worker_loop(worker: Worker, todo: queue.Queue, done: Callable[[CellOutcome], None],
                 start: Callable[[Cell, Worker], None], link_factory: LinkFactory, root: Path,
                 execute: Callable[[Link, Cell, Worker], CellOutcome], stop: threading.Event) -> None:
    """Pull cells until the queue is empty; one SuperLink per worker, restarted after an error."""
    link: Link | None = None
    try:
        while not stop.is_set():
            try:
                cell = todo.get_nowait()
            except queue.Empty:
                return
            start(cell, worker)
            try:
                if link is None:
                    link = link_factory(worker, root)
                    link.__enter__()
                outcome = execute(link, cell, worker)
            except Exception as err:  # noqa: BLE001 - a worker reports a cell as failed, it does not die
                outcome = CellOutcome(cell, "failed", None, error=repr(err), worker=worker.label)
            if outcome.status == "failed" and (outcome.record or {}).get("status", "error") == "error":
                _close(link)  # the SuperLink did not start, or a timed-out run may still hold it
                link = None
            if not stop.is_set():
                done(outcome)
    finally:
        _close(link)


def run_sweep(cells: Sequence[Cell], out: str | Path, *, force: bool = False,
              gpus: Sequence[int] | None = None, timeout: float = 3600.0, gpu_client_share: float = 0.1,
              script: str = "sweep", progress: bool = True,
              link_factory: LinkFactory = default_link_factory,
              execute: Callable[[Link, Cell, Worker], CellOutcome] | None = None) -> SweepResult:
    """Run the cells not yet in ``<out>/cells.jsonl``; return every cell's outcome.

    Parameters
    ----------
    cells:
        The sweep's cells (duplicates by key are run once).
    out:
        The sweep folder (store, run folders, tables).
    force:
        Recompute cells that are in the store.
    gpus:
        GPU indices to use, one worker each (default: every visible GPU; none: one CPU worker).
    timeout:
        Seconds one cell's run may take.
    gpu_client_share:
        ``client-resources-num-gpus`` on GPU workers.
    script:
        Recorded with each cell (which script computed it).
    progress:
        Show a tqdm bar.
    link_factory, execute:
        The SuperLink per worker and how a cell is run on it (tests substitute both).
    """
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    t0 = time.perf_counter()
    with FolderLock(out):
        store = CellStore(out)
        to_run, reused = plan(cells, store, force)
        workers = make_workers(visible_gpus() if gpus is None else gpus)
        result = SweepResult(workers=[w.label for w in workers])
        result.outcomes += [CellOutcome(c, "reused", store.get(c.key)) for c in reused]
        commit = git_commit()
        if execute is None:
            def execute(link: Link, cell: Cell, worker: Worker) -> CellOutcome:
                return execute_cell(link, cell, out, worker, timeout=timeout,
                                    gpu_client_share=gpu_client_share, script=script, commit=commit,
                                    previous=store.get(cell.key))
        todo: queue.Queue = queue.Queue()
        for cell in to_run:
            todo.put(cell)
        lock = threading.Lock()
        running: dict[str, str] = {}
        bar = tqdm(total=len(to_run) + len(reused), initial=len(reused), desc=script, unit="cell",
                   disable=not progress, dynamic_ncols=True)

        def show() -> None:
            bar.set_postfix_str(", ".join(f"{w}: {n}" for w, n in sorted(running.items())) or "-")

        def start(cell: Cell, worker: Worker) -> None:
            with lock:
                running[worker.label] = cell.name
                show()

        def done(outcome: CellOutcome) -> None:
            with lock:
                if outcome.status == "computed":
                    store.add(outcome.record)
                    if outcome.replaces:  # the new record is stored: the old run folder can go
                        shutil.rmtree(outcome.replaces, ignore_errors=True)
                else:
                    store.add_failure(outcome.record or {
                        "key": outcome.cell.key, "name": outcome.cell.name, "kind": outcome.cell.kind,
                        "status": "error", "error": outcome.error, "worker": outcome.worker,
                        "script": script, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                result.outcomes.append(outcome)
                running.pop(outcome.worker, None)
                bar.update(1)
                if outcome.status == "failed":
                    bar.write(f"FAILED {outcome.cell.name}: {outcome.error}")
                show()

        root = Path(tempfile.mkdtemp(prefix=f"fedtrust-sweep-{os.getpid()}-"))
        guard = start_guard(root)
        stop = threading.Event()
        threads = [threading.Thread(target=_worker_loop, daemon=True, name=f"sweep-{w.label}",
                                    args=(w, todo, done, start, link_factory, root, execute, stop))
                   for w in workers[:max(1, len(to_run))]] if to_run else []
        previous = _install_signal_handlers()
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            stop.set()
            bar.write(f"{script}: interrupted; stopping the SuperLinks (finished cells are in {store.path})")
            raise
        finally:
            _restore_signal_handlers(previous)
            bar.close()
            if stop.is_set():
                clean(root)  # stops every process of this sweep's SuperLinks, then removes root
            else:
                shutil.rmtree(root, ignore_errors=True)
            guard.terminate()
            guard.wait(timeout=10)
    order = {c.key: i for i, c in enumerate(cells)}
    result.outcomes.sort(key=lambda o: order.get(o.cell.key, len(order)))
    result.seconds = time.perf_counter() - t0
    return result


def _raise_interrupt(signum: int, frame: object) -> None:
    raise SweepInterrupted(signum)


def _install_signal_handlers() -> dict[int, Any]:
    """SIGTERM and SIGINT raise :class:`SweepInterrupted` in the main thread (if this is it)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, _raise_interrupt)
    return previous


def _restore_signal_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def describe(result: SweepResult, out: Path) -> str:
    """A human summary: what was computed, reused, failed, and where the run folders are."""
    lines = [(f"cells: {len(result.outcomes)} in total on {', '.join(result.workers) or '-'}: "
              f"{len(result.computed)} computed, {len(result.reused)} reused, {len(result.failed)} failed "
              f"({result.seconds:.0f} s)")]
    for o in result.outcomes:
        rec = o.record or {}
        where = rec.get("run_dir", str(run_folder(out, o.cell)))
        took = f"{rec.get('seconds', o.seconds):.0f} s" if rec.get("seconds", o.seconds) else ""
        extra = f"  ERROR: {o.error}" if o.status == "failed" else ""
        lines.append(f"  {o.status:8s} {o.cell.name:48s} {took:>7s}  {where}{extra}")
    lines.append(f"store: {out / 'cells.jsonl'}" + (f"; failures: {out / 'failed.jsonl'}" if result.failed else ""))
    return "\n".join(lines)


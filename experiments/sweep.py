"""Run a sweep's cells as Flower simulations, one worker per GPU, resumable through the store.

Each worker thread owns one private :class:`~experiments.flwr_runner.LocalSuperLink`
(``CUDA_VISIBLE_DEVICES`` = its GPU) and pulls cells from a shared queue; on a
machine without a GPU there is one CPU worker. A cell is one ``flwr run`` of the
app with ``output-dir = <out>/runs`` and ``run-name = <cell name>``; its
:class:`~experiments.store.CellRecord` (full run config, seed, timings, run folder,
summary of ``gradinv.csv``, ``mia.csv`` and ``rounds.csv``) is appended to the store
the moment it finishes.
Cells already in the store are reused; a cell without a record (interrupted) has
its partial run folder removed and is run again. A cell recomputed with ``--force``
runs into a second folder (``<name>-rerun``, or back into ``<name>``): its old record
and run folder stay until the new run has succeeded and its record is stored, so a
forced run that fails (or is killed) loses nothing.
"""

from __future__ import annotations

import math
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Self

from experiments.guard import clean, start_guard
from experiments.profiles import Cell
from experiments.store import RUNS_DIR, CellRecord, CellStore, FolderLock
from experiments.summaries import IncompleteRun, RunSummary, check_config, summarize_run


# ------------------------------------------------------------------ workers and devices
@dataclass(frozen=True)
class Worker:
    """One sweep worker: a GPU index (``None``: the CPU) and the environment of its SuperLink,
    or (``remote``) a slot of a Ray cluster whose cells reserve ``cell_cpus`` and ``cell_gpus``
    there (:mod:`experiments.ray_cells`)."""

    index: int
    gpu: int | None
    remote: bool = False
    cell_cpus: float = 1.0
    cell_gpus: float = 0.0

    @property
    def label(self) -> str:
        if self.remote:
            return f"ray{self.index}"
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
    """Extra federation config for a worker: each client's GPU share on a GPU worker; on a Ray
    slot also the size of the simulation's own Ray instance (what the cell's task reserved), in
    which each client takes one CPU (Flower's default, 2, would not fit a 1-CPU cell)."""
    if worker.remote:
        cpus = max(1, math.floor(worker.cell_cpus))
        fed: dict[str, Any] = {"init-args-num-cpus": cpus, "client-resources-num-cpus": 1}
        if worker.cell_gpus > 0:
            fed |= {"init-args-num-gpus": math.ceil(worker.cell_gpus),
                    "client-resources-num-gpus": float(gpu_client_share)}
        return fed
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
    record: CellRecord | None = None
    error: str = ""
    seconds: float = 0.0
    worker: str = ""
    #: The run folder of the record this outcome replaces (a forced cell), removed once it is stored.
    replaces: str = ""

    @property
    def link_broken(self) -> bool:
        """Whether the worker's SuperLink must be restarted: the run did not start, or timed out."""
        return self.status == "failed" and (self.record is None or self.record.status == "error")


Executor = Callable[[Link, Cell, Worker], CellOutcome]

RERUN_SUFFIX = "-rerun"


def run_folder(out: Path, cell: Cell, name: str | None = None) -> Path:
    return out / RUNS_DIR / (name or cell.name)


def rerun_name(cell: Cell, previous: CellRecord | None) -> str:
    """The run name of a cell's new run: never the folder its stored record points to."""
    if previous is not None and Path(previous.run_dir).name == cell.name:
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_record(cell: Cell, worker: Worker, name: str, federation: Mapping[str, Any], script: str,
               commit: str | None) -> CellRecord:
    """The record of a cell about to run as ``name`` (status ``error`` until it has run).

    Its run config is the one the app gets, with ``output-dir`` relative to the sweep
    folder like ``run_dir``.
    """
    return CellRecord(
        key=cell.key, name=cell.name, kind=cell.kind, status="error", dataset=cell.dataset,
        algorithm=cell.algorithm.family, level=cell.algorithm.level, seed=cell.seed,
        run_config={**cell.run_config, "output-dir": RUNS_DIR, "run-name": name},
        num_supernodes=cell.num_supernodes, federation_config=dict(federation),
        run_dir=str(Path(RUNS_DIR) / name), worker=worker.label, script=script, fedtrust_commit=commit,
        host=platform.node(), started=_now())


def ran_record(record: CellRecord, ran: Any, out: Path, seconds: float) -> CellRecord:
    """``record`` with what ``flwr run`` said, its log saved (in the run folder, or under ``failed/``)."""
    folder = out / record.run_dir
    log = Path(record.run_dir) / "flwr.log" if folder.is_dir() else Path("failed") / f"{record.name}.log"
    (out / log).parent.mkdir(parents=True, exist_ok=True)
    (out / log).write_text(getattr(ran, "log", "") or "")
    return replace(record, run_id=getattr(ran, "run_id", None), flwr_status=ran.status,
                   flwr_details=getattr(ran, "details", ""), log=str(log), finished=_now(),
                   seconds=round(seconds, 3), host=getattr(ran, "host", None) or record.host)


def read_result(folder: Path, cell: Cell) -> RunSummary:
    """The summary of a cell's finished run folder, after checking it ran the cell's config.

    Raises ``IncompleteRun`` (or ``OSError``, ``ValueError``, ``KeyError`` for a damaged file).
    """
    check_config(folder, cell.run_config)
    return summarize_run(folder, cell.kind)


def replaced_folder(out: Path, previous: CellRecord | None, folder: Path) -> str:
    """The old run folder of a recomputed cell, when it is another folder beside the new one."""
    old = previous.run_path(out) if previous is not None else None
    if old is None:
        return ""
    old, new = old.resolve(), folder.resolve()
    return str(old) if old != new and old.parent == new.parent else ""


def _failed(cell: Cell, record: CellRecord) -> CellOutcome:
    return CellOutcome(cell, "failed", record, error=record.error, seconds=record.seconds or 0.0,
                       worker=record.worker)


def execute_cell(link: Link, cell: Cell, out: Path, worker: Worker, *, timeout: float,
                 gpu_client_share: float, script: str, commit: str | None,
                 previous: CellRecord | None = None) -> CellOutcome:
    """Run one cell on ``link`` and build its record (or the failure).

    ``previous`` is the cell's stored record when it is recomputed (``--force``): the new
    run then goes to another folder, and the outcome names the old one it replaces.
    """
    name = rerun_name(cell, previous)
    folder = run_folder(out, cell, name)
    remove_partial(out, cell, name)
    record = new_record(cell, worker, name, federation_config(worker, gpu_client_share), script, commit)
    t0 = time.perf_counter()
    try:
        ran = link.run_app(run_config={**record.run_config, "output-dir": str((out / RUNS_DIR).resolve())},
                           num_supernodes=cell.num_supernodes, federation_config=dict(record.federation_config),
                           timeout=timeout)
    except (TimeoutError, RuntimeError, OSError, subprocess.SubprocessError) as err:
        return _failed(cell, replace(record, error=repr(err), seconds=time.perf_counter() - t0))
    record = ran_record(record, ran, out, time.perf_counter() - t0)
    if not ran.ok:
        return _failed(cell, replace(record, status="failed",
                                     error=f"flwr run ended {ran.status}: {getattr(ran, 'details', '')}"))
    try:
        summary = read_result(folder, cell)
    except (IncompleteRun, OSError, ValueError, KeyError) as err:
        return _failed(cell, replace(record, status="incomplete", error=str(err)))
    return CellOutcome(cell, "computed", replace(record, status="ok", summary=summary), seconds=record.seconds,
                       worker=worker.label, replaces=replaced_folder(out, previous, folder))


def cell_executor(out: Path, store: CellStore, *, timeout: float, gpu_client_share: float,
                  script: str) -> Executor:
    """:func:`execute_cell` for this sweep (a forced cell's previous record taken from ``store``)."""
    commit = git_commit()

    def execute(link: Link, cell: Cell, worker: Worker) -> CellOutcome:
        return execute_cell(link, cell, out, worker, timeout=timeout, gpu_client_share=gpu_client_share,
                            script=script, commit=commit, previous=store.get(cell.key))

    return execute


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


def failure_record(outcome: CellOutcome, script: str) -> CellRecord:
    """The record of a cell that failed before it had one (its worker raised)."""
    cell = outcome.cell
    return CellRecord(key=cell.key, name=cell.name, kind=cell.kind, status="error", error=outcome.error,
                      worker=outcome.worker, script=script, finished=_now())


def store_outcome(store: CellStore, outcome: CellOutcome, script: str) -> None:
    """Keep what a finished cell left: its record (then remove the run folder it replaces), or its failure."""
    if outcome.status == "computed" and outcome.record is not None:
        store.add(outcome.record)
        if outcome.replaces:  # the new record is stored: the old run folder can go
            shutil.rmtree(outcome.replaces, ignore_errors=True)
    else:
        store.add_failure(outcome.record or failure_record(outcome, script))


class SweepProgress:
    """The progress bar (tqdm): cells done, and the cell each worker runs now.

    ``lock`` serialises the workers' reports (and what the sweep does with them).
    """

    def __init__(self, total: int, done: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.lock = threading.Lock()
        self.running: dict[str, str] = {}
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="cell", disable=not enabled, dynamic_ncols=True)

    def _show(self) -> None:
        self.bar.set_postfix_str(", ".join(f"{w}: {n}" for w, n in sorted(self.running.items())) or "-")

    def started(self, cell: Cell, worker: Worker) -> None:
        with self.lock:
            self.running[worker.label] = cell.name
            self._show()

    def finished(self, outcome: CellOutcome) -> None:
        """One more cell done (call with :attr:`lock` held)."""
        self.running.pop(outcome.worker, None)
        self.bar.update(1)
        if outcome.status == "failed":
            self.bar.write(f"FAILED {outcome.cell.name}: {outcome.error}")
        self._show()

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def _close(link: Link | None) -> None:
    if link is not None:
        link.__exit__(None, None, None)


def _worker_loop(worker: Worker, todo: queue.Queue, done: Callable[[CellOutcome], None],
                 start: Callable[[Cell, Worker], None], link_factory: LinkFactory, root: Path,
                 execute: Executor, stop: threading.Event) -> None:
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
            if outcome.link_broken:
                _close(link)  # the SuperLink did not start, or a timed-out run may still hold it
                link = None
            if not stop.is_set():
                done(outcome)
    finally:
        _close(link)


def run_workers(workers: Sequence[Worker], cells: Sequence[Cell], execute: Executor, link_factory: LinkFactory,
                progress: SweepProgress, done: Callable[[CellOutcome], None], interrupted: str) -> None:
    """Run ``cells`` on one thread per worker (at most one per cell), their SuperLinks under a guard.

    On SIGTERM or SIGINT (:class:`SweepInterrupted`) every SuperLink of the sweep is
    stopped, ``interrupted`` is printed and the interrupt goes on.
    """
    if not cells:
        return
    todo: queue.Queue = queue.Queue()
    for cell in cells:
        todo.put(cell)
    root = Path(tempfile.mkdtemp(prefix=f"fedtrust-sweep-{os.getpid()}-"))
    guard = start_guard(root)
    stop = threading.Event()
    threads = [threading.Thread(target=_worker_loop, daemon=True, name=f"sweep-{w.label}",
                                args=(w, todo, done, progress.started, link_factory, root, execute, stop))
               for w in workers[:len(cells)]]
    previous = _install_signal_handlers()
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        progress.write(interrupted)
        raise
    finally:
        _restore_signal_handlers(previous)
        if stop.is_set():
            clean(root)  # stops every process of this sweep's SuperLinks, then removes root
        else:
            shutil.rmtree(root, ignore_errors=True)
        guard.terminate()
        guard.wait(timeout=10)


def run_sweep(cells: Sequence[Cell], out: str | Path, *, force: bool = False,
              gpus: Sequence[int] | None = None, timeout: float = 3600.0, gpu_client_share: float = 0.1,
              script: str = "sweep", progress: bool = True,
              link_factory: LinkFactory = default_link_factory, execute: Executor | None = None,
              workers: Sequence[Worker] | None = None) -> SweepResult:
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
    workers:
        The workers (default: one per GPU of ``gpus``); a Ray cluster's slots with its
        ``link_factory`` run the cells on the cluster (:mod:`experiments.ray_cells`).
    """
    out = Path(out).resolve()
    t0 = time.perf_counter()
    with FolderLock(out):
        store = CellStore(out)
        to_run, reused = plan(cells, store, force)
        workers = list(workers) if workers is not None else make_workers(visible_gpus() if gpus is None else gpus)
        result = SweepResult(outcomes=[CellOutcome(c, "reused", store.get(c.key)) for c in reused],
                             workers=[w.label for w in workers])
        execute = execute or cell_executor(out, store, timeout=timeout, gpu_client_share=gpu_client_share,
                                           script=script)
        bar = SweepProgress(len(to_run) + len(reused), len(reused), script, progress)

        def done(outcome: CellOutcome) -> None:
            with bar.lock:
                store_outcome(store, outcome, script)
                result.outcomes.append(outcome)
                bar.finished(outcome)

        try:
            run_workers(workers, to_run, execute, link_factory, bar, done,
                        f"{script}: interrupted; stopping the SuperLinks (finished cells are in {store.path})")
        finally:
            bar.close()
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
        where = (o.record.run_path(out) if o.record else None) or run_folder(out, o.cell)
        seconds = (o.record.seconds if o.record else None) or o.seconds
        took = f"{seconds:.0f} s" if seconds else ""
        extra = f"  ERROR: {o.error}" if o.status == "failed" else ""
        lines.append(f"  {o.status:8s} {o.cell.name:48s} {took:>7s}  {where}{extra}")
    lines.append(f"store: {out / 'cells.jsonl'}" + (f"; failures: {out / 'failed.jsonl'}" if result.failed else ""))
    return "\n".join(lines)

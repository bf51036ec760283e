"""Processes of fedtrust's SuperLinks: find them, tell whether they live, end them (psutil).

The one place that looks at other processes, for the sweeps' SuperLinks
(:mod:`experiments.flwr_runner`), the guard that stops them when a sweep dies
(:mod:`experiments.guard`), the loopback deployment, and the user's command
``python -m experiments.stop_local_superlink``. psutil makes this work wherever it
does (Linux, macOS, Windows) instead of reading ``/proc``; processes that vanish or
that this user may not inspect are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def start_time(pid: int) -> float | None:
    """When ``pid`` started (to tell a reused pid apart), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except _GONE:
        return None


def alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone) and, if given, started at ``started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or proc.create_time() == started
    except _GONE:
        return False


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, their children, ...)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except _GONE:
        return []


def find(match: Callable[[psutil.Process], bool]) -> list[int]:
    """Pids (not this process) for which ``match`` holds; processes that vanish or deny access are skipped."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if match(proc):
                found.append(proc.pid)
        except _GONE:
            continue
    return found


def with_text(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    return find(lambda p: text in " ".join(p.cmdline()))


def under(root: str | Path) -> list[int]:
    """Pids whose ``FLWR_HOME`` lies under ``root`` or whose command line names ``root``."""
    root = str(Path(root))

    def match(proc: psutil.Process) -> bool:
        if root in " ".join(proc.cmdline()):
            return True
        try:
            home = proc.environ().get("FLWR_HOME", "")
        except _GONE:
            return False
        return home == root or home.startswith(root + os.sep)

    return find(match)


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` (the very process, not a reuse of its pid) still runs; a zombie counts as gone."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def terminate(processes: Iterable[subprocess.Popen] = (), extra_pids: Iterable[int] = (),
              timeout: float = 20.0) -> list[int]:
    """End processes, their descendants and ``extra_pids``: SIGTERM, then SIGKILL after ``timeout / 2``.

    The processes are looked up once, as psutil ``Process`` objects, so that a pid that
    ends and is reused meanwhile is never signalled. ``processes`` started with
    ``start_new_session=True`` also get their process group signalled (a child that
    re-parented itself is still in it). Returns every pid that was signalled, so that a
    caller can check that none is alive afterwards. This process is never signalled.
    """
    processes = list(processes)
    me = os.getpid()
    pids = [p for p in [*(p.pid for p in processes), *extra_pids] if p != me]
    tree: dict[int, psutil.Process] = {}
    for pid in pids:
        if pid in tree:
            continue
        try:
            proc = psutil.Process(pid)
            tree[pid] = proc
            tree.update((child.pid, child) for child in proc.children(recursive=True) if child.pid != me)
        except _GONE:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for popen in processes:
            try:
                os.killpg(popen.pid, sig)
            except OSError:  # the group is gone, or not ours
                pass
        for proc in tree.values():
            try:
                if _running(proc):  # is_running() compares the start time: a reused pid is left alone
                    proc.send_signal(sig)
            except _GONE:
                pass
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline and any(_running(p) for p in tree.values()):
            time.sleep(0.2)
            for popen in processes:
                popen.poll()  # reap our own children, so that they do not linger as zombies
        for popen in processes:
            popen.poll()
    return sorted({*pids, *tree})

"""Stop a sweep's SuperLinks when the sweep process dies, however it dies.

Each :class:`~experiments.flwr_runner.LocalSuperLink` runs in its own session
(``start_new_session=True``), so killing the sweep's process group, even with
``SIGKILL``, leaves it and its simulation and Ray processes running. The sweep
starts this guard, in a session of its own, with its pid and the folder under
which every ``FLWR_HOME`` of the sweep lives. When the sweep is gone the guard
terminates every process whose environment has ``FLWR_HOME`` under that folder
(or whose command line names it), then removes the folder.

Usage (started by :func:`start_guard`)::

    python -m experiments.guard --parent PID --root DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _start_time(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``started``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if stat[0] == "Z":
        return False
    return started is None or stat[19] == started


def processes_under(root: str | Path) -> list[int]:
    """Pids (not this one) whose ``FLWR_HOME`` lies under ``root`` or whose command line names it."""
    root = str(Path(root))
    mark_env = f"FLWR_HOME={root}".encode()
    mark_cmd = root.encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(var.startswith(mark_env) for var in env.split(b"\0")) or mark_cmd in cmd:
            found.append(int(entry.name))
    return found


def terminate(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left; returns the pids signalled."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
    return pids


def clean(root: str | Path) -> list[int]:
    """Stop every process of ``root`` (repeated until none is left) and remove ``root``."""
    stopped: list[int] = []
    for _ in range(5):
        pids = processes_under(root)
        if not pids:
            break
        stopped += terminate(pids)
    shutil.rmtree(root, ignore_errors=True)
    return stopped


def start_guard(root: str | Path, parent: int | None = None) -> subprocess.Popen:
    """Start the guard for the sweep ``parent`` (default: this process) and the folder ``root``."""
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.guard", "--parent", str(parent or os.getpid()), "--root", str(root)],
        cwd=str(Path(__file__).resolve().parents[1]), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    """Wait for the parent to end, then clean its folder. SIGTERM ends the guard without cleaning."""
    parser = argparse.ArgumentParser(description="stop a dead sweep's SuperLinks")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--poll", type=float, default=0.5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = _start_time(args.parent)
    while alive(args.parent, started):
        time.sleep(args.poll)
    clean(args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

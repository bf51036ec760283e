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

from experiments.processes import alive, start_time, terminate, under


def clean(root: str | Path) -> list[int]:
    """Stop every process of ``root`` (repeated until none is left) and remove ``root``."""
    stopped: list[int] = []
    for _ in range(5):
        pids = under(root)
        if not pids:
            break
        stopped += terminate(extra_pids=pids)
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
    started = start_time(args.parent)
    while alive(args.parent, started):
        time.sleep(args.poll)
    clean(args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

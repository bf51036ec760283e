"""Stop your own local SuperLink: the detached one that ``flwr run .`` starts.

``flwr run .`` with the default ``local`` connection starts ``flower-superlink
--simulation ... --port 39091 --log-file $FLWR_HOME/local-superlink/superlink.log``
in a session of its own, and it outlives the command. ``pkill -f flower-superlink``
would also end other users' SuperLinks and the private ones of fedtrust's sweeps and
tests. This ends only the SuperLinks that

* belong to the current user,
* listen on the local SuperLink's port (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``,
  default 39091), given as ``--port``, and
* write their log under this user's ``$FLWR_HOME/local-superlink/`` (default
  ``~/.flwr``),

and every process they started (the simulation, Ray workers)::

    python -m experiments.stop_local_superlink            # stop it, print what was stopped
    python -m experiments.stop_local_superlink --dry-run  # only show what would be stopped
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import psutil

from experiments import processes

DEFAULT_PORT = 39091


def flwr_home() -> Path:
    """``$FLWR_HOME``, or ``~/.flwr`` (Flower's default)."""
    return Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser().resolve()


def _option(cmdline: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command line."""
    for i, arg in enumerate(cmdline):
        if arg == name and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def local_superlinks(port: int, home: Path) -> list[int]:
    """Pids of this user's ``flower-superlink`` processes on ``port`` logging under ``home/local-superlink``."""
    user = psutil.Process().username()
    log_dir = (home / "local-superlink").resolve()

    def match(proc: psutil.Process) -> bool:
        cmdline = proc.cmdline()
        if not any(Path(arg).name == "flower-superlink" for arg in cmdline[:2]):
            return False
        if proc.username() != user or _option(cmdline, "--port") != str(port):
            return False
        log_file = _option(cmdline, "--log-file")
        if log_file is None:
            return False
        path = Path(log_file).expanduser()
        if not path.is_absolute():  # a relative FLWR_HOME: relative to the SuperLink's working directory
            path = Path(proc.cwd()) / path
        return path.resolve().parent == log_dir

    return processes.find(match)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stop your own local SuperLink (the one `flwr run .` starts).")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", DEFAULT_PORT)),
                        help="its port (default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or 39091)")
    parser.add_argument("--flwr-home", type=Path, default=None,
                        help="its FLWR_HOME (default: $FLWR_HOME or ~/.flwr)")
    parser.add_argument("--dry-run", action="store_true", help="show what would be stopped, stop nothing")
    args = parser.parse_args(argv)
    home = (args.flwr_home.expanduser().resolve() if args.flwr_home else flwr_home())
    pids = local_superlinks(args.port, home)
    if not pids:
        print(f"no local SuperLink of yours on port {args.port} (FLWR_HOME {home})")
        return 0
    for pid in pids:
        tree = [pid, *processes.descendants(pid)]
        print(f"{'would stop' if args.dry_run else 'stopping'} SuperLink {pid} on port {args.port} "
              f"and {len(tree) - 1} process(es) it started")
    if not args.dry_run:
        stopped = processes.terminate(extra_pids=pids)
        left = [p for p in stopped if processes.alive(p)]
        print(f"stopped {len(stopped) - len(left)} process(es)" + (f"; still alive: {left}" if left else ""))
        return 1 if left else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

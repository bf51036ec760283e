"""Run the fedtrust Flower app as ``flwr run`` does, and know for sure whether it finished.

``flwr run --stream`` exits 0 even when the run failed, so :func:`run_app` starts the
run with ``--format json``, follows its log, and asks ``flwr ls --run-id ID --format json``
for the final status. :class:`LocalSuperLink` gives a private ``FLWR_HOME`` and stops the
local SuperLink (and every process it started) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import processes
from experiments.processes import terminate

REPO_ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("finished",)


def toml_value(value: Any) -> str:
    """A run-config value as TOML (strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    """``--run-config`` text for a dict of overrides."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


def _flower_bin(name: str) -> str:
    """Flower's executable ``name``: beside this interpreter (a venv), else the first on ``PATH``."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _flwr_bin() -> str:
    return _flower_bin("flwr")


@dataclass
class RunOutcome:
    """How a run ended."""

    run_id: int
    status: str
    details: str
    log: str

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalSuperLink:
    """A private SuperLink (simulation runtime) on free loopback ports, and ``flwr`` bound to it.

    Unlike ``flwr run .`` with the default ``local`` connection (a shared SuperLink on
    the fixed port 39091 that outlives the command), this starts its own
    ``flower-superlink --simulation`` with ``--disable-runtime-dependency-installation``
    in a private ``FLWR_HOME`` and stops it, and every process it started, on exit.
    Several can run side by side, e.g. one per GPU (``env={"CUDA_VISIBLE_DEVICES": "1"}``).

    Parameters
    ----------
    flwr_home:
        Folder for Flower's config and the SuperLink's state (a temporary folder by
        default, removed on exit).
    env:
        Extra environment for the SuperLink and everything it starts.
    """

    CONNECTION = "fedtrust-local"

    def __init__(self, flwr_home: str | Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self._tmp = None if flwr_home else tempfile.mkdtemp(prefix="fedtrust-flwr-")
        self.home = Path(flwr_home or self._tmp)
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "FLWR_HOME": str(self.home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.control_address = ""
        self.stopped_pids: list[int] = []

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and write the ``flwr`` connection for it."""
        self.home.mkdir(parents=True, exist_ok=True)
        port = free_port()  # Flower 1.42 serves the Control, Fleet and Runtime APIs on one HTTP port
        self.control_address = f"127.0.0.1:{port}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.CONNECTION}"\n\n[superlink.{self.CONNECTION}]\n'
            f'address = "{self.control_address}"\ninsecure = true\n')
        log = (self.home / "superlink.log").open("ab")
        self.process = subprocess.Popen(
            [_flower_bin("flower-superlink"), "--insecure", "--simulation",
             "--isolation", "subprocess", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(self.home / "state.db")],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.process.returncode}; "
                                   f"see {self.home / 'superlink.log'}")
            if _json_of(self.flwr("ls", "--format", "json", timeout=30, check=False).stdout).get("success"):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"flower-superlink did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the SuperLink and all its descendants (simulation, Ray workers)."""
        procs = [self.process] if self.process is not None else []
        self.stopped_pids = terminate(procs, extra_pids=processes.with_text(str(self.home)), timeout=timeout)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def flwr(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command with this ``FLWR_HOME``.

        Not once the folder's ``config.toml`` is gone (the SuperLink was stopped and its
        folder removed, e.g. by an interrupted sweep whose worker thread still polls): ``flwr``
        would then write a default config and start a detached SuperLink of its own on port
        39091 in a re-created folder, which nothing would stop. ``RuntimeError`` instead.
        """
        if not (self.home / "config.toml").is_file():
            raise RuntimeError(f"{self.home} has no config.toml (its SuperLink was stopped): not running "
                               f"flwr {args[0] if args else ''}, which would start a SuperLink of its own")
        return subprocess.run([_flwr_bin(), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check, stdin=subprocess.DEVNULL)

    def run_app(self, app: str | Path = REPO_ROOT, run_config: Mapping[str, Any] | None = None,
                num_supernodes: int = 2, federation_config: Mapping[str, Any] | None = None,
                timeout: float = 900, echo: bool = False, superlink: str | None = None) -> RunOutcome:
        """``flwr run`` the app in simulation and wait for its final status.

        Raises ``TimeoutError`` when the run is not finished after ``timeout`` seconds.
        """
        run_id = self.submit(app, run_config=run_config, num_supernodes=num_supernodes,
                             federation_config=federation_config, superlink=superlink)
        return self.wait(run_id, timeout=timeout, echo=echo, superlink=superlink)

    def submit(self, app: str | Path = REPO_ROOT, run_config: Mapping[str, Any] | None = None,
               num_supernodes: int = 2, federation_config: Mapping[str, Any] | None = None,
               superlink: str | None = None) -> int:
        """Start a run (``flwr run --format json``) and return its run id without waiting."""
        fed = {"num-supernodes": num_supernodes, **(federation_config or {})}
        args = ["run", str(app), superlink or self.CONNECTION, "--format", "json"]
        if run_config:
            args += ["--run-config", run_config_arg(run_config)]
        if superlink is None:
            args += ["--federation-config", run_config_arg(fed)]
        started = self.flwr(*args, timeout=300, check=False)
        try:
            return int(_json_of(started.stdout)["run-id"])
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"flwr run did not start a run:\n{started.stdout}\n{started.stderr}") from err

    def status(self, run_id: int, superlink: str | None = None) -> tuple[str, str]:
        """``(status, details)`` of a run from ``flwr ls --run-id``."""
        args = ["ls"] + ([superlink] if superlink else []) + ["--run-id", str(run_id), "--format", "json"]
        out = self.flwr(*args, timeout=60, check=False)
        try:
            runs = json.loads(out.stdout)["runs"]
        except (json.JSONDecodeError, KeyError):
            return "unknown", out.stdout + out.stderr
        row = next((r for r in runs if str(r.get("run-id")) == str(run_id)), runs[0] if runs else {})
        return str(row.get("status", "unknown")), str(row.get("status-details", ""))

    def wait(self, run_id: int, timeout: float = 900, echo: bool = False,
             superlink: str | None = None) -> RunOutcome:
        """Poll until the run is finished; collect its log."""
        deadline = time.monotonic() + timeout
        status, details = "unknown", ""
        while time.monotonic() < deadline:
            status, details = self.status(run_id, superlink)
            if status.startswith(TERMINAL):
                break
            time.sleep(2)
        else:
            raise TimeoutError(f"run {run_id} not finished after {timeout:.0f}s (last status {status})")
        log = self.flwr("log", str(run_id), *([superlink] if superlink else []), "--show",
                        timeout=60, check=False)
        text = log.stdout + log.stderr
        if echo:
            print(text)
        return RunOutcome(run_id=run_id, status=status, details=details, log=text)


def _json_of(text: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed ({} if none)."""
    try:
        return json.loads(text[text.index("{"):])
    except (ValueError, json.JSONDecodeError):
        return {}

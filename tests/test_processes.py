"""Process handling with psutil: a process tree ends, and the stop command ends only the user's local SuperLink."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from experiments import processes
from experiments.flwr_runner import free_port
from experiments.stop_local_superlink import local_superlinks, main

BIN = Path(sys.executable).parent


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.2)
    return cond()


def test_terminate_ends_a_process_tree_in_its_own_session():
    # a parent in a new session, two children and a grandchild (in a subshell)
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & (sleep 300 & wait) & wait"], start_new_session=True)
    assert wait_for(lambda: len(processes.descendants(proc.pid)) == 3)
    tree = [proc.pid, *processes.descendants(proc.pid)]
    assert all(processes.alive(p) for p in tree)
    stopped = processes.terminate([proc], timeout=10)
    assert set(tree) <= set(stopped)
    assert not [p for p in tree if processes.alive(p)]
    assert proc.returncode is not None


def test_terminate_kills_what_ignores_sigterm():
    """A tree that ignores SIGTERM (inherited by the children) is SIGKILLed after ``timeout / 2``."""
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"], start_new_session=True)
    assert wait_for(lambda: len(processes.descendants(proc.pid)) == 2)
    tree = [proc.pid, *processes.descendants(proc.pid)]
    t0 = time.monotonic()
    processes.terminate(extra_pids=[proc.pid], timeout=2)  # by pid, as the guard and the stop command do
    assert wait_for(lambda: proc.poll() is not None, 5) and proc.returncode == -signal.SIGKILL
    assert not [p for p in tree if processes.alive(p)] and time.monotonic() - t0 < 10


def test_one_terminator_for_runner_guard_and_deployment():
    from experiments import flwr_runner, guard, loopback_deployment

    assert flwr_runner.terminate is guard.terminate is loopback_deployment.terminate is processes.terminate


def test_alive_tells_a_reused_pid_apart():
    proc = subprocess.Popen(["sleep", "300"])
    started = processes.start_time(proc.pid)
    assert processes.alive(proc.pid, started) and not processes.alive(proc.pid, started - 1)
    proc.kill()
    proc.wait()
    assert not processes.alive(proc.pid) and processes.start_time(proc.pid) is None


def superlink(home: Path, port: int, local: bool) -> subprocess.Popen:
    """A real ``flower-superlink``: as ``flwr run .`` starts it (``local``), or as a sweep does."""
    home.mkdir(parents=True)
    cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port), "--database", str(home / "state.db")]
    if local:
        (home / "local-superlink").mkdir()
        cmd += ["--log-file", str(home / "local-superlink" / "superlink.log")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={"FLWR_HOME": str(home), "PATH": str(BIN)})


def serving(port: int) -> bool:
    """Whether a SuperLink answers on ``port`` (Flower's own check for the local SuperLink)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_stop_local_superlink_stops_only_the_users_local_one(tmp_path, capsys):
    port, sweep_port, other_port = free_port(), free_port(), free_port()
    mine = superlink(tmp_path / "home", port, local=True)  # as `flwr run .` starts it, on "39091"
    sweep = superlink(tmp_path / "sweep-home", sweep_port, local=False)  # a sweep's private SuperLink
    other = superlink(tmp_path / "other-home", other_port, local=True)  # the local one of another FLWR_HOME
    try:
        assert wait_for(lambda: serving(port), 90), "the SuperLink did not come up"
        assert all(processes.alive(p.pid) for p in (mine, sweep, other))
        assert local_superlinks(port, tmp_path / "home") == [mine.pid]
        assert local_superlinks(other_port, tmp_path / "home") == []  # the right port, another FLWR_HOME
        assert local_superlinks(sweep_port, tmp_path / "sweep-home") == []  # not started as the local one
        assert main(["--port", str(port), "--flwr-home", str(tmp_path / "home"), "--dry-run"]) == 0
        assert f"would stop SuperLink {mine.pid}" in capsys.readouterr().out and processes.alive(mine.pid)
        assert main(["--port", str(port), "--flwr-home", str(tmp_path / "home")]) == 0
        assert f"stopping SuperLink {mine.pid}" in capsys.readouterr().out
        assert wait_for(lambda: mine.poll() is not None, 10) and not serving(port)
        assert processes.alive(sweep.pid) and processes.alive(other.pid)
        assert main(["--port", str(port), "--flwr-home", str(tmp_path / "home")]) == 0
        assert "no local SuperLink of yours" in capsys.readouterr().out
    finally:
        processes.terminate([mine, sweep, other], timeout=10)


def test_flwr_is_not_run_once_the_superlink_folder_is_gone(tmp_path):
    """An interrupted sweep's worker thread may still poll after its SuperLink folder was removed;
    flwr would then write a default config and start a detached SuperLink on port 39091."""
    from experiments.flwr_runner import LocalSuperLink

    link = LocalSuperLink(flwr_home=tmp_path / "gone")
    with pytest.raises(RuntimeError, match="no config.toml"):
        link.flwr("ls", "--format", "json")
    assert not (tmp_path / "gone").exists()

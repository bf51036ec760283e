"""A real SuperLink and SuperNodes on loopback, with TLS: the deployment path on one machine.

This starts exactly what the README's "Running on real machines" section starts by
hand (``flower-superlink`` with a TLS certificate and ``--enable-supernode-auth``, an
ECDSA key pair per SuperNode whose public key is registered with ``flwr supernode
register`` before that SuperNode starts with ``--auth-supernode-private-key``,
``--node-config`` per node, a ``flwr`` connection with the CA certificate), only on
127.0.0.1. Each process gets its own process group, and :meth:`LoopbackDeployment.stop`
ends them all. Used by the deployment test; handy to try a deployment before using real
machines::

    with LoopbackDeployment(workdir, num_nodes=2) as dep:
        outcome = dep.run_app(run_config={"compressor": "powersgd"})

Flower 1.42 serves the Fleet, Control and Runtime APIs on the one ``--host``/``--port``
(there is no separate Control API address any more), so here all of them are on
127.0.0.1; see the README for what that port exposes on a real network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.flwr_runner import (
    REPO_ROOT,
    LocalSuperLink,
    RunOutcome,
    _json_of,
    free_port,
    run_config_arg,
)
from experiments.processes import descendants, terminate


def make_certificates(out: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """Run ``deploy/make-certificates.sh`` (openssl): a CA and a SuperLink certificate."""
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "make-certificates.sh"), str(out), *hosts],
                   check=True, capture_output=True, text=True)
    return out


def make_node_key(path: Path) -> Path:
    """An ECDSA P-384 key pair for SuperNode authentication: ``path`` and ``path.pub``.

    The same files as ``ssh-keygen -t ecdsa -b 384 -N "" -f path`` writes (OpenSSH format),
    which is what ``flwr supernode register`` (the public key) and ``flower-supernode
    --auth-supernode-private-key`` (the private key) read in Flower 1.42.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.with_name(path.name + ".pub").write_bytes(pub + f" {path.name}\n".encode())
    return path


class LoopbackDeployment(LocalSuperLink):
    """SuperLink (deployment mode, TLS) + ``num_nodes`` SuperNodes on 127.0.0.1.

    Parameters
    ----------
    workdir:
        Folder for certificates, node keys, logs, Flower's config and state.
    num_nodes:
        SuperNodes to start; node ``i`` gets ``partition-id=i num-partitions=num_nodes``.
    node_config:
        Extra ``--node-config`` entries for every node (e.g. ``{"data-dir": "/data"}``).
    per_node:
        Extra entries for single nodes, by index (e.g. ``{2: {"fail-rounds": "2"}}``).
    supernode_auth:
        Start the SuperLink with ``--enable-supernode-auth``, make a key pair per node
        (``keys/node<i>``, ``keys/node<i>.pub``), register each public key through the
        Control API (``flwr supernode register``) and then start that node with
        ``--auth-supernode-private-key``. ``node_ids`` holds the registered IDs. When
        ``False`` the SuperNodes register themselves (anyone reaching the port can).
    """

    CONNECTION = "fedtrust-loopback"

    def __init__(self, workdir: str | Path, num_nodes: int = 2,
                 node_config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 per_node: Mapping[int, Mapping[str, Any]] | None = None,
                 supernode_auth: bool = True) -> None:
        super().__init__(flwr_home=Path(workdir) / "flwr-home", env=env)
        self.workdir = Path(workdir)
        self.num_nodes = num_nodes
        self.node_config = dict(node_config or {})
        self.per_node = {int(k): dict(v) for k, v in (per_node or {}).items()}
        self.supernode_auth = supernode_auth
        self.certs = self.workdir / "certs"
        self.keys = self.workdir / "keys"
        self.node_ids: list[int] = []
        self.nodes: list[subprocess.Popen] = []
        self.processes: list[subprocess.Popen] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen([str(Path(sys.executable).with_name(args[0])), *args[1:]], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 90.0) -> None:
        """Make certificates, start the SuperLink, register node keys, start the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        certs = make_certificates(self.certs)
        port = free_port()  # Fleet, Control and Runtime API: one port in Flower 1.42
        self.control_address = f"127.0.0.1:{port}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.CONNECTION}"\n\n[superlink.{self.CONNECTION}]\n'
            f'address = "{self.control_address}"\nroot-certificates = "{certs / "ca.crt"}"\n')
        self._spawn("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
            "--host", "127.0.0.1", "--port", str(port), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--database", str(self.workdir / "state.db"),
            *(["--enable-supernode-auth"] if self.supernode_auth else [])])
        self.process = self.processes[0]
        self._wait_ready(timeout)
        keys: list[Path | None] = [None] * self.num_nodes
        if self.supernode_auth:  # register every key before its SuperNode starts
            keys = [make_node_key(self.keys / f"node{i}") for i in range(self.num_nodes)]
            self.node_ids = [self.register_node(key.with_name(key.name + ".pub")) for key in keys]
        for i in range(self.num_nodes):
            config = {"partition-id": i, "num-partitions": self.num_nodes, **self.node_config,
                      **self.per_node.get(i, {})}
            self.nodes.append(self.start_supernode(f"supernode{i}", keys[i], config))

    def register_node(self, public_key: Path) -> int:
        """``flwr supernode register PUBLIC_KEY``: the node ID the SuperLink gave the key."""
        out = self.flwr("supernode", "register", str(public_key), self.CONNECTION, "--format", "json",
                        timeout=60, check=False)
        reply = _json_of(out.stdout)
        if not reply.get("success"):
            raise RuntimeError(f"flwr supernode register {public_key} failed:\n{out.stdout}\n{out.stderr}")
        return int(reply["node-id"])

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: every node the SuperLink knows (registered or self-registered)."""
        out = self.flwr("supernode", "list", self.CONNECTION, "--format", "json", timeout=60, check=False)
        reply = _json_of(out.stdout)
        if not reply.get("success"):
            raise RuntimeError(f"flwr supernode list failed:\n{out.stdout}\n{out.stderr}")
        return list(reply.get("nodes", []))

    def start_supernode(self, name: str, private_key: Path | None = None,
                        node_config: Mapping[str, Any] | None = None) -> subprocess.Popen:
        """Start one ``flower-supernode`` (log: ``<workdir>/<name>.log``); :meth:`stop` ends it.

        ``private_key``: ``--auth-supernode-private-key``; without it the SuperNode makes a
        key pair of its own and asks the SuperLink to register it (refused with
        ``--enable-supernode-auth``). Nodes started here directly are not in ``nodes``.
        """
        args = ["flower-supernode", "--root-certificates", str(self.certs / "ca.crt"),
                "--superlink", self.control_address, "--port", str(free_port())]
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        if node_config:
            args += ["--node-config", run_config_arg(node_config)]
        return self._spawn(name, args)

    def kill_node(self, index: int) -> None:
        """Kill SuperNode ``index`` and its children at once (a client machine that drops out)."""
        proc = self.nodes[index]
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.workdir / 'superlink.log'}")
            if _json_of(self.flwr("ls", "--format", "json", timeout=30, check=False).stdout).get("success"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the SuperLink did not answer within {timeout:.0f}s")

    def run_app(self, app: str | Path = REPO_ROOT, run_config: Mapping[str, Any] | None = None,
                num_supernodes: int = 0, federation_config: Mapping[str, Any] | None = None,
                timeout: float = 900, echo: bool = False, superlink: str | None = None) -> RunOutcome:
        """``flwr run`` the app on this deployment and wait for its final status."""
        return super().run_app(app, run_config=run_config, timeout=timeout, echo=echo,
                               superlink=superlink or self.CONNECTION)

    def stop(self, timeout: float = 20.0) -> None:
        """End every process started here (their process groups and descendants)."""
        self.stopped_pids = terminate(self.processes, timeout=timeout)

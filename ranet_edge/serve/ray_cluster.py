"""A Ray cluster of several nodes on one machine, made as on several: ``ray start --head``,
then ``ray start --address HEAD`` once per other node, each with resources of its own.

For the tests and the benchmark of a cluster (``tests/test_ray_cluster.py``,
``benchmarks/ray_cluster.py``). Each node is one ``ray start --block`` in a session of its
own, so everything that node runs (its raylet, agents, workers: Serve's replicas) is in that
session and nothing else is: :meth:`LocalCluster.kill` ends a node the way a machine that
loses power does (SIGKILL to all of it at once), and :meth:`LocalCluster.close` kills what is
left of every node and counts what it could not. The nodes share one temp directory (the
head's); every process of the cluster names it on its command line.

Ray's own processes listen on all interfaces in a cluster (token authentication, Ray's
default since 2.5x, guards them); the head's GCS is reached at 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ranet_edge.errors import InputError, ServeError

from . import procs

START_TRIES = 2
NODE_START_S = 120.0  # one `ray start` on a loaded 2-core machine (Ray's own start takes 5-60 s)
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # per node: requests carry small images
# the GCS declares a node dead after 3 missed checks 1 s apart (Ray's default: 5 of 3 s)
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class Node:
    """One ``ray start --block`` of the cluster and what it said."""

    name: str
    proc: subprocess.Popen
    log: Path
    resources: dict

    @property
    def sid(self) -> int:
        """Its session id: every process of this node is in it."""
        return self.proc.pid

    def processes(self) -> set[procs.Proc]:
        """The live processes of this node (the ``ray start`` itself, raylet, agents, workers)."""
        return procs.in_session(self.sid)

    def node_id(self) -> str:
        """Ray's id of this node (hex), read from its raylet's command line; "" before it runs."""
        for pid, _ in self.processes():
            m = re.search(r"--node_id=([0-9a-f]+)", procs.cmdline(pid))
            if m and "raylet/raylet" in procs.cmdline(pid):
                return m.group(1)
        return ""


def free_port() -> int:
    """A TCP port the kernel picked, free when this returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head node (``start``) and worker nodes (``add_node``) on this machine.

    ``env`` is added to every node's environment (and :attr:`env` is what a client of the
    cluster should run with: usage statistics off, token authentication on). Use it as a
    context manager, or call :meth:`close`.

    Raises:
        InputError: a count of CPUs below 1.
        ServeError: a node did not start within ``NODE_START_S`` (the message names its log).
    """

    def __init__(self, temp_dir: str | None = None, env: dict[str, str] | None = None):
        # Ray's socket paths below the temp dir must fit in 107 bytes: keep it short
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", **(env or {})}
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # "0" (single-machine mode) refuses nodes
        self.env.pop("RAY_ADDRESS", None)
        self.port = 0
        self.nodes: list[Node] = []
        self._ray = str(Path(sys.executable).with_name("ray"))

    @property
    def address(self) -> str:
        """HOST:PORT of the head's GCS, what ``ray start --address`` and ``ranet-edge serve --address`` take."""
        return f"127.0.0.1:{self.port}"

    def start(self, num_cpus: int = 1, resources: dict | None = None) -> Node:
        """Start the head node: ``ray start --head`` with ``num_cpus`` CPUs and ``resources``."""
        self.port = free_port()
        args = ["--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
                "--include-dashboard=false", "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()), "--system-config", json.dumps(HEALTH_CHECK)]
        return self._start("head", args, num_cpus, resources)

    def add_node(self, num_cpus: int = 1, resources: dict | None = None, name: str = "") -> Node:
        """Start a worker node joined to the head: ``ray start --address HEAD``."""
        if not self.port:
            raise InputError("start the head node first (LocalCluster.start)")
        args = ["--address", self.address, "--node-ip-address", "127.0.0.1"]
        return self._start(name or f"worker{len(self.nodes)}", args, num_cpus, resources)

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict | None) -> Node:
        """Start a node; once more when the first try timed out (a raylet whose agent, a Python
        process, took longer than Ray's fixed ~15 s to start: what a busy 2-core machine does)."""
        if num_cpus < 1:
            raise InputError(f"a node needs at least 1 CPU, got {num_cpus}")
        deadline = time.monotonic() + NODE_START_S
        for attempt in range(START_TRIES):
            node, why = self._try_start(name, args, num_cpus, resources, deadline)
            if not why:
                return node
            tail = " | ".join(node.log.read_text(errors="replace").strip().splitlines()[-3:])
            if "timed out during startup" not in tail or attempt + 1 == START_TRIES or time.monotonic() > deadline:
                raise ServeError(f"Ray node {name!r} did not start ({why}); its log {node.log}: {tail[-600:]}")
        raise AssertionError("unreachable")  # the loop returns or raises

    def _try_start(self, name: str, args: list[str], num_cpus: int, resources: dict | None,
                   deadline: float) -> tuple[Node, str]:
        """(the node, "" once it runs; else why not, the node killed)."""
        log = Path(self.temp_dir) / f"{name}-{len(self.nodes)}.log"
        cmd = [self._ray, "start", "--block", *args, "--num-cpus", str(num_cpus), "--disable-usage-stats",
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--dashboard-agent-listen-port", str(free_port()),
               "--resources", json.dumps(resources or {})]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)
        node = Node(name, proc, log, {"CPU": num_cpus, **(resources or {})})
        self.nodes.append(node)
        while "Ray runtime started" not in log.read_text(errors="replace") or not node.node_id():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up in {NODE_START_S:g} s"
                self.kill(node)
                return node, why
            time.sleep(0.2)
        return node, ""

    def kill(self, node: Node) -> None:
        """SIGKILL every process of ``node`` at once (its raylet and workers: a lost machine)."""
        deadline = time.monotonic() + 10.0  # a killed process takes a moment to go, on a loaded machine
        while (left := node.processes()) and time.monotonic() < deadline:
            for pid, _ in left:  # again for one forked while the others were being killed
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=5)

    def processes(self) -> set[procs.Proc]:
        """Every live process of the cluster: those of its nodes' sessions, and any other that
        names its temp directory (a worker that left its session)."""
        found = procs.matching(self.temp_dir)
        for node in self.nodes:
            found |= node.processes()
        return found

    def close(self, grace_s: float = 5.0) -> int:
        """Stop every node: SIGTERM to each ``ray start --block`` (Ray stops its node), then,
        after ``grace_s``, SIGKILL to whatever of the cluster is left. Returns how many of its
        processes were still running after that (0 unless the kernel refused)."""
        for node in self.nodes:
            if node.proc.poll() is None:
                with contextlib.suppress(OSError):
                    node.proc.terminate()
        deadline = time.monotonic() + grace_s
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = procs.kill(self.processes(), grace_s=3.0)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=1)
        return len(left)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

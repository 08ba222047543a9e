"""Running `ranet-edge serve` as a user runs it, for the tests of both ingresses: a subprocess
in a session of its own (so a test can signal its group and, whatever happens, kill all of
it), clients that keep requests in flight, the signals a user sends, and the checks that it
stopped cleanly (exit code, nothing left, nothing listening). Also :func:`started_once`, for
module fixtures that start something (Ray) that may not come up."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np
import pytest

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.errors import RanetEdgeError

T = TypeVar("T")
STOP_S = 15.0  # the bound a user relies on: `ranet-edge serve` is gone this long after the signal
SLOW_REST_S = 1.0  # the half-sent request sends the rest of its body this long after the signal
HANDLER_S = 0.2  # and waits this long before the signal for the server to start handling it (~1 ms idle)


class Started(Generic[T]):
    """What a module fixture started, or why it could not start it. :meth:`get` hands it to
    each test; after a failed start, the first test to ask errors with the cause in full and
    the others are skipped with a pointer to that error, instead of the same report once per
    test of the module (pytest's own behaviour for a module fixture that raises)."""

    def __init__(self, what: str):
        self.what = what
        self.value: T | None = None
        self.error: BaseException | None = None
        self.first = ""  # the test that reported the error

    def get(self, request: pytest.FixtureRequest) -> T:
        if self.error is None:
            return self.value
        if self.first:
            pytest.skip(f"{self.what} did not start: see the first error of this module ({self.first})")
        self.first = request.node.name
        if isinstance(self.error, RanetEdgeError):  # its message is the report: no traceback
            pytest.fail(f"{self.what} did not start: {self.error}", pytrace=False)
        raise self.error


@contextlib.contextmanager
def started_once(what: str, start: Callable[[], AbstractContextManager[T]]) -> Iterator[Started[T]]:
    """For a module fixture: enter ``start()`` once, keep its value or its failure in a
    :class:`Started`, leave it on the way out. A function fixture returns ``started.get(request)``."""
    started: Started[T] = Started(what)
    with contextlib.ExitStack() as stack:
        try:
            started.value = stack.enter_context(start())
        except Exception as exc:
            started.error = exc
        yield started


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel picked, free when this returns (held together while picking)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def session_procs(sid: int) -> dict[int, str]:
    """pid -> command line (or state) of every process in session ``sid``, zombies included."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            found[pid] = cmd[:120] or "(zombie)"
        except OSError:  # gone meanwhile
            pass
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (Ray's actors run in process groups of their own)."""
    for _ in range(3):
        procs = session_procs(sid)
        if not procs:
            return
        for pid in procs:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def left_after_stop(sid: int, within_s: float = 3.0) -> dict[int, str]:
    """The processes of session ``sid`` still there ``within_s`` after its leader exited."""
    deadline = time.monotonic() + within_s
    while (left := session_procs(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    out: Path
    err: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


@contextlib.contextmanager
def running_server(tmp_path: Path, cmd: Callable[..., list[str]], *args: str,
                   start_s: float = 240.0) -> Iterator[Running]:
    """``cmd(*args)`` (a `ranet-edge serve` command line, ``--port`` added) in a session of its
    own, on kernel-picked ports (HAProxy's stats ports included), up and answering within
    ``start_s``; always killed, all of it, on the way out."""
    port, stats, metrics = free_ports(3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics)}
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd("--port", str(port), *args), stdout=o, stderr=e, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Running(proc, port, out, err)
    try:
        deadline = time.monotonic() + start_s
        while "Press Ctrl-C to stop." not in srv.stdout() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "Press Ctrl-C to stop." in srv.stdout(), (proc.poll(), srv.stdout(), srv.stderr())
        yield srv
    finally:
        kill_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def post(url: str, body: bytes, ctype: str = "image/png") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def batch_body(n: int = 16) -> bytes:
    """A JSON list of ``n`` sample images as base64 PNGs: a request that takes a while."""
    with np.load(SAMPLE_IMAGES) as z:
        x = z["x"][:n]
    return json.dumps([base64.b64encode(cv2.imencode(".png", im)[1].tobytes()).decode() for im in x]).encode()


def _http_status(sock: socket.socket) -> int | str:
    """The status of the one answer on ``sock`` (read to its end), or how it ended without one."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        if not data:
            return type(exc).__name__
    if not data.startswith(b"HTTP/"):
        return "closed without a status"
    return int(data.split(b" ", 2)[1])


class SlowUpload:
    """A request surely in flight when the signal lands: headers and half the body sent now,
    then ``HANDLER_S`` for the server to read them and start its handler (bytes still in the
    socket when the signal is read make a request that arrived while draining: 503), the
    rest by ``finish`` (the server is draining by then), which returns the status (or how
    the connection ended without one)."""

    def __init__(self, port: int, body: bytes):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.body = body
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.sock.sendall(head + body[:len(body) // 2])
        time.sleep(HANDLER_S)

    def finish(self) -> int | str:
        try:
            self.sock.sendall(self.body[len(self.body) // 2:])
        except OSError as exc:
            return type(exc).__name__
        with self.sock:
            return _http_status(self.sock)


class Clients:
    """Threads posting one body in a loop, each until its first answer other than 200; every
    request kept as (start, end, outcome): a status, or the name of the error instead of one."""

    def __init__(self, port: int, body: bytes, n: int = 3):
        self.port, self.body = port, body
        self.done: list[tuple[float, float, int | str]] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        outcome: int | str = 200
        while outcome == 200:
            start = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                    s.sendall((f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode() + self.body)
                    outcome = _http_status(s)
            except OSError as exc:
                outcome = type(exc).__name__
            self.done.append((start, time.monotonic(), outcome))

    def wait_answered(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.done) >= n, self.done

    def join(self, timeout: float = 40.0) -> None:
        for t in self.threads:
            t.join(timeout)


def stop_with(srv: Running, how: str, images: int = 16, stop_s: float = STOP_S) -> tuple[int | str, list, float]:
    """Send the signal ``how`` names with requests of ``images`` images in flight; (status of
    the slow upload, requests that were in flight at the signal, seconds until the server exited)."""
    body = batch_body(images)
    clients = Clients(srv.port, body)
    clients.wait_answered(3)  # warm: batches answered
    slow = SlowUpload(srv.port, body)
    sent = time.monotonic()
    if how == "group":  # a terminal's Ctrl-C
        os.killpg(srv.proc.pid, signal.SIGINT)
    else:
        srv.proc.send_signal(signal.SIGINT if how == "main-int" else signal.SIGTERM)
    time.sleep(SLOW_REST_S)
    slow_status = slow.finish()
    try:
        srv.proc.wait(timeout=stop_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {stop_s:g} s after the signal ({how}): {srv.stderr()[-2000:]}")
    took = time.monotonic() - sent
    clients.join()
    in_flight = [(round(start - sent, 3), outcome) for start, end, outcome in clients.done if start < sent < end]
    before = [outcome for start, _, outcome in clients.done if start < sent]
    print(f"\n{' '.join(srv.proc.args[1:])}: {how}: exit {srv.proc.returncode} {took:.1f} s after the signal; "
          f"in flight: {in_flight}, slow upload: {slow_status}")
    assert all(o in (200, 503) for o in before), ("a request sent before the signal got no status", clients.done)
    return slow_status, in_flight, took


def assert_stopped_cleanly(srv: Running) -> None:
    stderr = srv.stderr()
    assert srv.proc.returncode == 0, stderr
    assert "shutting down" in stderr and stderr.rstrip().endswith("stopped"), stderr
    assert "Traceback" not in stderr and "INFO" not in stderr, stderr
    assert left_after_stop(srv.proc.pid) == {}, "processes left behind"
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(f"{srv.url}/v1/health", timeout=5)


def refused_upload(method: str, url: str, body: bytes, headers: dict) -> tuple[int, Message, bytes]:
    """A body over the server's limit, sent as a careful client does: the headers first, then
    the answer read before the body goes out (the server refuses on Content-Length and closes;
    a client still writing the body then meets a broken pipe, and urllib loses the answer)."""
    u = urllib.parse.urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((u.hostname, u.port), timeout=60) as s:
        s.sendall(f"{method} {u.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            more = s.recv(65536)
            if not more:
                break
            data += more
    status, _, rest = data.partition(b"\r\n")
    raw_headers, _, payload = rest.partition(b"\r\n\r\n")
    msg = Message()
    for line in raw_headers.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        msg[name.strip()] = value.strip()
    return int(status.split()[1]), msg, payload


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30

"""A private Ray on this machine, up within a bound, or an error that says why not.

``ray.init`` gives up on a raylet that does not register after its own 30 s, with a message
that names no cause, and leaves the processes it started running. Here:

- each start gets a temp directory of its own (``$RAY_TMPDIR`` or the system's temp
  directory, ``ranet-edge-ray-*``): no other Ray session on the machine, current or stale,
  shares its session directory, ports files or ``session_latest``, and ``address="local"``
  keeps ``ray.init`` from joining a cluster named by ``RAY_ADDRESS`` or by an earlier
  ``ray start``;
- a watchdog ends the start once the bound (``RANET_EDGE_RAY_START_S``, default
  ``START_S``) has passed, or as soon as the raylet has stopped (a fatal line in its log);
- a failed start is diagnosed (:func:`ray_diagnose.diagnose`) while its processes are still
  there, then every one of them is killed;
- a raylet that gave up waiting for its agents to report their ports (Ray waits a fixed
  ~15 s, too short for a Python process to start on a loaded 2-core machine) is the one
  failure tried again, once, when enough of the bound is left.

The watchdog interrupts ``ray.init`` with SIGALRM, which only the main thread can take: in
another thread the start is bounded by Ray's own timeouts only.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from ranet_edge.errors import InputError

from . import procs
from .ray_diagnose import RayStartError, diagnose, machine, raylet_fatal, session_dir

START_S_ENV = "RANET_EDGE_RAY_START_S"
START_S = 120.0  # a loaded 2-core machine has been seen to take ~60 s for a start that succeeds
RETRY_MIN_S = 45.0  # a second start is tried only with this much of the bound left
POLL_S = 0.5
# Ray's longest socket path below the temp dir; a Unix socket path holds at most 107 bytes
_SOCKET_TAIL = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRay:
    """A private Ray that came up: where its files are, what ``ray.init`` started."""

    temp_dir: str
    session_dir: str
    started: frozenset[procs.Proc]  # the processes ray.init started (GCS, raylet, monitors, agents ...)

    @property
    def logs_dir(self) -> str:
        """Where Ray's logs of this session are (``serve/`` below it: the replicas')."""
        return os.path.join(self.session_dir, "logs")


class _Abandoned(BaseException):
    """Raised in the main thread by the watchdog's SIGALRM: the start is given up. Not an
    ``Exception``: Ray catches those in places (the dashboard's start) and goes on."""


def start_s() -> float:
    """The bound on a start, in seconds: ``RANET_EDGE_RAY_START_S`` or ``START_S``.

    Raises:
        InputError: the variable is set to something other than a positive number.
    """
    text = os.environ.get(START_S_ENV, "").strip()
    if not text:
        return START_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise InputError(f"{START_S_ENV}={text!r} must be a positive number of seconds (default {START_S:g})")
    return value


def start_local_ray(num_cpus: int, object_store_bytes: int, bound_s: float | None = None) -> LocalRay:
    """``ray.init`` a private Ray on this machine with ``num_cpus`` CPUs, an object store of
    ``object_store_bytes`` and no dashboard, up within ``bound_s`` seconds (default
    :func:`start_s`; a ``ray.init`` blocked in a call to the GCS may take up to ~15 s more to
    return), or nothing left of it.

    Raises:
        RayStartError: Ray's processes did not come up; its ``summary`` names why (the
            raylet, its log, the GCS port, memory) and where Ray's logs are.
        InputError: ``RANET_EDGE_RAY_START_S`` is not a positive number.
    """
    bound = start_s() if bound_s is None else bound_s
    deadline = time.monotonic() + bound
    try:
        return _start(_new_temp_dir(), num_cpus, object_store_bytes, deadline, bound)
    except RayStartError as exc:
        if not exc.agent_too_slow or deadline - time.monotonic() < RETRY_MIN_S:
            raise
        logger.warning("Ray's raylet gave up waiting for its agent to start (%s); starting Ray again ...", machine())
    return _start(_new_temp_dir(), num_cpus, object_store_bytes, deadline, bound)


def _new_temp_dir() -> str:
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(os.path.abspath(base)) + len("/ranet-edge-ray-xxxxxxxx") + _SOCKET_TAIL > 107:
        base = "/tmp"  # Ray's sockets would not fit below a longer one
    return tempfile.mkdtemp(prefix="ranet-edge-ray-", dir=base)


def _start(temp_dir: str, num_cpus: int, object_store_bytes: int, deadline: float, bound: float) -> LocalRay:
    import ray

    before = procs.descendants(os.getpid())
    watchdog = _Watchdog(temp_dir, before, deadline, f"Ray did not start within {bound:g} s")
    ray_error: Exception | None = None
    try:
        with watchdog:
            ray.init(address="local", _temp_dir=temp_dir, num_cpus=num_cpus, include_dashboard=False,
                     object_store_memory=object_store_bytes, log_to_driver=False, logging_level="WARNING")
    except _Abandoned:
        pass
    except Exception as exc:  # Ray's own ("The current node timed out during startup", a port, a file),
        ray_error = exc  # or what the watchdog's kill made of the call that was waiting
    except BaseException:  # KeyboardInterrupt (a signal while starting): stop what started, then go on
        _stop(temp_dir, before)
        raise
    else:
        node = ray._private.worker._global_node  # no public API tells the session directory
        return LocalRay(temp_dir, node.get_session_dir_path(), frozenset(procs.descendants(*_started_by_ray())))
    error = watchdog.error or diagnose(temp_dir, "Ray did not start", ray_error)
    _stop(temp_dir, before)
    raise error from ray_error


def _stop(temp_dir: str, before: set[procs.Proc], disconnect: bool = True) -> None:
    """Disconnect if connected (``disconnect``), then kill what this start left: the processes
    that appeared below this one since, and any that names its temp directory (orphans of a
    dead raylet)."""
    ray = sys.modules.get("ray")
    if disconnect and ray is not None and ray.is_initialized():
        from .launcher import bounded

        bounded(ray.shutdown, 10.0, None)
    left = (procs.descendants(os.getpid()) - before) | procs.matching(temp_dir)
    procs.kill({p for p in left if p[0] != os.getpid()}, grace_s=2.0)


def _started_by_ray() -> list[int]:
    """Pids of the processes ray.init started on this machine (GCS, raylet, monitors)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # no public API lists them
    found = []
    for infos in (getattr(node, "all_processes", None) or {}).values():
        found.extend(info.process.pid for info in infos if getattr(info, "process", None) is not None)
    return found


class _Watchdog:
    """While in its ``with`` block (main thread only), ends the block once ``deadline`` has
    passed or the raylet has stopped: from its own thread it diagnoses the start
    (``error``), kills the start's processes (a ``ray.init`` blocked in a call to the GCS
    returns only once the GCS is gone), then raises :class:`_Abandoned` in the main thread."""

    def __init__(self, temp_dir: str, before: set[procs.Proc], deadline: float, late: str):
        self.temp_dir, self.before, self.deadline, self.late = temp_dir, before, deadline, late
        self.error: RayStartError | None = None
        self._armed = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = None
        self._main = threading.main_thread().ident

    def __enter__(self) -> _Watchdog:
        if threading.current_thread() is threading.main_thread():
            self._handler = signal.signal(signal.SIGALRM, self._on_alarm)
            self._armed = True
            self._thread = threading.Thread(target=self._watch, name="ranet-edge-ray-start", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            with self._lock:  # no signal is sent once this is False
                self._armed = False
        finally:
            self._done.set()
            if self._thread is not None:
                self._thread.join()
                signal.signal(signal.SIGALRM, signal.SIG_DFL if self._handler is None else self._handler)

    def _on_alarm(self, signum, frame) -> None:
        if self._armed and self.error is not None:
            raise _Abandoned(self.error.summary)
        if callable(self._handler):  # someone else's alarm (pytest-timeout, say)
            self._handler(signum, frame)

    def _watch(self) -> None:
        start = time.monotonic()
        while not self._done.wait(POLL_S):
            reason = self._check(start)
            if reason:
                with self._lock:
                    if self._armed:
                        self.error = diagnose(self.temp_dir, reason)
                        _stop(self.temp_dir, self.before, disconnect=False)
                        signal.pthread_kill(self._main, signal.SIGALRM)
                return

    def _check(self, start: float) -> str:
        """Why to give up now ("" to go on waiting)."""
        if time.monotonic() > self.deadline:
            return self.late
        session = session_dir(self.temp_dir)
        log = os.path.join(session, "logs", "raylet.out") if session else ""
        try:
            with open(log, errors="replace") as f:
                stopped = bool(raylet_fatal(f.read()))
        except OSError:
            stopped = False
        return f"Ray did not start (its raylet stopped {time.monotonic() - start:.0f} s in)" if stopped else ""

"""Why a private Ray did not come up: read from its session directory and this machine.

Ray's own message for a raylet that never registered ("The current node timed out during
startup ...") names no cause. The cause is in the raylet's own log, in whether the raylet
process is there at all, and in the state of the machine; :func:`diagnose` gathers those
while the processes of the failed start are still as they were.

Each process of a Ray session carries its session directory on its command line, and each
private Ray started by :mod:`ranet_edge.serve.ray_start` has a temp directory of its own, so
nothing here can be confused with another Ray session on the same machine.
"""
from __future__ import annotations

import glob
import os
import re
import socket
from dataclasses import dataclass, field

from ranet_edge.errors import ServeError

from . import procs

# "[2026-12-05 07:27:21,949 C 15068 15068] (raylet) node_manager.cc:3576: message"
_LOG_LINE = re.compile(r"^\[[^\]]*? ([A-Z]) \d+ \d+\] \(raylet\) (\S+?):?\s+(.*)$")
_BOILERPLATE = re.compile(r"An unexpected system state has occurred\..*?fix it\.\s*")
# the raylet waits a fixed ~15 s for its agents (Python processes) to write their port files
_AGENT_PORT_WAIT = re.compile(r"Timed out waiting for file \S*?(\w+_port)_[0-9a-f]+")
TAIL_LINES = 12


class RayStartError(ServeError):
    """A private Ray whose processes did not come up. ``summary`` is one line naming the
    cause (the raylet, its log, the GCS port, memory); ``str()`` adds the last lines of the
    raylet's logs. ``agent_too_slow``: the raylet gave up waiting for its agents to report
    their ports, a sign of a machine too busy right now (a new start may succeed)."""

    def __init__(self, summary: str, detail: str = "", agent_too_slow: bool = False):
        super().__init__(summary)
        self.detail = detail
        self.agent_too_slow = agent_too_slow

    @property
    def summary(self) -> str:
        """The one line naming the cause, without the log tails of ``detail``."""
        return str(self.args[0])

    def __str__(self) -> str:
        return f"{self.summary}\n{self.detail}" if self.detail else self.summary


@dataclass
class _Raylet:
    """What the session directory and /proc say about the raylet."""

    pids: list[int] = field(default_factory=list)  # raylet processes of the session, running
    out: str | None = None  # raylet.out, None when there is none
    err: str | None = None  # raylet.err
    fatal: str = ""  # the line it stopped on (level C or F), the boilerplate cut
    error: str = ""  # else its last line of level E


def session_dir(temp_dir: str) -> str | None:
    """The newest Ray session under ``temp_dir``, None when Ray made none."""
    sessions = [s for s in glob.glob(os.path.join(temp_dir, "session_*")) if not os.path.islink(s)]
    return max(sessions, key=os.path.getmtime) if sessions else None


def raylet_fatal(log: str, errors: bool = False) -> str:
    """The first line of the raylet's log that says why it stopped (level C or F; with
    ``errors``, else its last line of level E), without Ray's "report a bug" boilerplate;
    "" when there is none."""
    last_error = ""
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        if m and m.group(1) in "CFE":
            text = f"{m.group(2)}: {_BOILERPLATE.sub('', m.group(3)).strip()}"
            if m.group(1) in "CF":
                return text
            last_error = text
    return last_error if errors else ""


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _tail(text: str | None, n: int = TAIL_LINES) -> str:
    """The last ``n`` lines of a log, stack frames of a crash left out."""
    lines = [line for line in (text or "").splitlines() if line.strip() and "(+0x" not in line]
    return "\n".join("    " + line[:400] for line in lines[-n:]) or "    (empty)"


def _raylet(temp_dir: str, logs: str | None) -> _Raylet:
    r = _Raylet()
    r.pids = sorted(pid for pid, _ in procs.matching(temp_dir) if "raylet/raylet" in procs.cmdline(pid))
    if logs:
        r.out, r.err = _read(os.path.join(logs, "raylet.out")), _read(os.path.join(logs, "raylet.err"))
        r.fatal = raylet_fatal(r.out or "")
        r.error = "" if r.fatal else raylet_fatal(r.out or "", errors=True)
    return r


def _gcs(session: str | None) -> str:
    """The GCS port the session recorded, and whether it answers on this machine."""
    files = glob.glob(os.path.join(session, "gcs_server_port_*")) if session else []
    port = (_read(files[0]) or "").strip() if files else ""
    if not port.isdigit():
        return "the GCS recorded no port (it did not start)"
    for host in ("127.0.0.1", _node_ip()):
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return f"the GCS answers on port {port}"
        except OSError:
            continue
    return f"the GCS does not answer on its port {port}"


def _node_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the route picks the address
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def machine() -> str:
    """Load, available memory and free /dev/shm, as one phrase."""
    parts = []
    try:
        parts.append(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        pass
    meminfo = _read("/proc/meminfo") or ""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    if m:
        parts.append(f"{int(m.group(1)) / 2**20:.1f} GiB memory available")
    try:
        st = os.statvfs("/dev/shm")
        parts.append(f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB free in /dev/shm")
    except OSError:
        parts.append("no /dev/shm")
    return ", ".join(parts)


def diagnose(temp_dir: str, why: str, ray_error: BaseException | None = None) -> RayStartError:
    """What stopped the private Ray under ``temp_dir`` from coming up, as an error to raise.

    ``why`` says how the start ended ("Ray did not start within 120 s"); ``ray_error`` is
    what ``ray.init`` raised, if it did. Call it before the processes are killed: whether the
    raylet runs and whether the GCS answers are part of the answer.
    """
    session = session_dir(temp_dir)
    logs = os.path.join(session, "logs") if session else None
    r = _raylet(temp_dir, logs)
    slow_agent = _AGENT_PORT_WAIT.search(r.fatal)
    if r.fatal:
        raylet = f"raylet.out says {r.fatal.replace(session, '<session>')[:300]}"
        if slow_agent:
            raylet += (f" (the raylet waits about 15 s for its agent, a Python process, to report its "
                       f"{slow_agent.group(1)}: this machine is too busy right now)")
    elif r.out is not None:
        state = f"is running (pid {r.pids[0]})" if r.pids else "is not running"
        last = r.error or next((line for line in reversed(r.out.splitlines()) if line.strip()), "")
        raylet = (f"the raylet {state} but has not registered; the {'last error' if r.error else 'last line'} "
                  f"of its log: {last[:200]}")
    elif r.pids:
        raylet = f"the raylet is running (pid {r.pids[0]}) but has written no log"
    else:
        raylet = "no raylet process and no raylet log: Ray had not started the raylet"
    where = f"Ray's logs: {logs}" if logs else f"Ray made no session under {temp_dir}"
    said = f"; Ray said: {_first_line(ray_error)}" if ray_error is not None and not r.fatal else ""
    summary = f"{why}: {raylet}; {_gcs(session)}; {machine()}{said}; {where}"
    detail = ""
    if logs:
        detail = (f"  raylet.out ({'missing' if r.out is None else 'last lines'}):\n{_tail(r.out)}\n"
                  f"  raylet.err ({'missing' if r.err is None else 'last lines'}):\n{_tail(r.err)}\n"
                  f"  logs present: {', '.join(sorted(os.listdir(logs))) if os.path.isdir(logs) else 'none'}")
    if ray_error is not None:
        detail += f"\n  ray.init raised {type(ray_error).__name__}: {str(ray_error).strip()[:2000]}"
    return RayStartError(summary, detail.strip("\n"), agent_too_slow=bool(slow_agent))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

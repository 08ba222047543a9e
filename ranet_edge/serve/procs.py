"""The processes a local Ray leaves on this machine: found through /proc, killed as a last resort.

Linux only (everything here is a no-op elsewhere). A process is named by ``(pid, start)``,
its start time in clock ticks since boot, so a pid the kernel hands out again is never
mistaken for the process it named before.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36

Proc = tuple[int, int]  # (pid, start time in ticks since boot)


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state letter) of ``pid``, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def _table() -> dict[int, tuple[int, int, str]]:
    table = {}
    for name in os.listdir("/proc") if sys.platform.startswith("linux") else ():
        if name.isdigit() and (st := _stat(int(name))) is not None:
            table[int(name)] = st
    return table


def descendants(*roots: int) -> set[Proc]:
    """Every live process below ``roots`` (the roots included), zombies left out."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        ppid, start, state = table[pid]
        if state != "Z":
            found.add((pid, start))
        todo.extend(c for c in children.get(pid, ()) if (c, table[c][1]) not in found)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces; "" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def matching(text: str) -> set[Proc]:
    """Every live process (zombies left out) whose command line contains ``text``."""
    return {(pid, start) for pid, (_, start, state) in _table().items()
            if state != "Z" and text in cmdline(pid)}


def in_session(sid: int) -> set[Proc]:
    """Every live process (zombies left out) of session ``sid``."""
    found = set()
    for pid, (_, start, state) in _table().items():
        try:
            if state != "Z" and os.getsid(pid) == sid:
                found.add((pid, start))
        except OSError:  # gone meanwhile
            pass
    return found


def alive(procs: set[Proc]) -> set[Proc]:
    """Those of ``procs`` still running (same pid, same start time, not a zombie)."""
    out = set()
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[1] == start and st[2] != "Z":
            out.add((pid, start))
    return out


def kill(procs: set[Proc], grace_s: float = 1.0) -> set[Proc]:
    """SIGKILL each of ``procs`` still running, wait up to ``grace_s`` for them to go (reaping
    those that are children of this process) and return those still there."""
    for pid, _ in alive(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while True:
        for pid, _ in procs:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours, or already reaped
                pass
        left = alive(procs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def reap() -> None:
    """Collect every child of this process that has exited (orphans adopted as subreaper).
    Only for a process that owns all of its children (``ranet-edge serve``): it takes the
    exit status that a ``subprocess.Popen`` of this process would otherwise read."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper(on: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``):
    a Ray worker whose raylet died stays below this process, where :func:`descendants` finds it,
    instead of moving to init. ``on=False`` undoes it. True when that worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False

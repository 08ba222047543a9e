"""The pieces of the bounded stop of `ranet-edge serve` on Ray, without Ray: the process sweep
(ranet_edge/serve/procs.py, real processes) and the bounded steps (launcher.bounded)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from ranet_edge.serve import procs
from ranet_edge.serve.launcher import Flag, bounded

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_descendants_and_kill_take_the_whole_tree():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(tree := procs.descendants(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(tree) == 3 and proc.pid in {pid for pid, _ in tree}
        assert procs.alive(tree) == tree
        assert procs.kill(tree, grace_s=5) == set()
        assert procs.alive(tree) == set() and proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_not_the_process_it_named():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (pid, start), = procs.descendants(proc.pid)
        assert procs.alive({(pid, start + 1)}) == set()  # same pid, another start: another process
        assert procs.kill({(pid, start + 1)}, grace_s=0) == set() and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_as_subreaper_an_orphan_stays_below_us(tmp_path):
    """The grandchild outlives its parent; it is then our child, found and killed by the sweep."""
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        from ranet_edge.serve import procs
        assert procs.become_subreaper()
        subprocess.run(["sh", "-c", "sleep 60 & echo $!"], stdout=open("orphan", "w"), check=True)
        orphan = int(open("orphan").read())
        time.sleep(0.2)
        assert open(f"/proc/{orphan}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())
        left = {p for p in procs.descendants(os.getpid()) if p[0] != os.getpid()}
        assert {pid for pid, _ in left} == {orphan}, left
        assert procs.kill(left, grace_s=5) == set()
        procs.reap()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


def test_bounded_returns_on_time_and_says_whether_the_step_finished():
    assert bounded(lambda: None, 5, None)
    assert not bounded(lambda: 1 / 0, 5, None)  # a step that raised is not a clean one
    start = time.monotonic()
    assert not bounded(lambda: time.sleep(30), 0.3, None)
    assert time.monotonic() - start < 5
    hurry = Flag()
    hurry.set()
    start = time.monotonic()
    assert not bounded(lambda: time.sleep(30), 20, hurry)  # a second Ctrl-C cuts the wait
    assert time.monotonic() - start < 5

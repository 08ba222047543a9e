"""A private Ray that does not come up says why, within a bound, and leaves nothing running:
`ranet-edge serve --ray` prints one line naming the raylet, its log and the machine, and a
module fixture that starts Ray reports that once, not once per test.

The failures are real: a bound too short for Ray to start (RANET_EDGE_RAY_START_S), and a
dashboard agent slowed past the raylet's ~15 s wait for its port (a sitecustomize on the
agent's PYTHONPATH), which is what a loaded 2-core machine does to Ray by itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from serve_harness import free_ports, left_after_stop

from ranet_edge.serve import procs
from ranet_edge.serve.ray_diagnose import raylet_fatal

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
TESTS = Path(__file__).parent

# the raylet's own log as Ray 2.60 wrote it when its dashboard agent was too slow to start
RAYLET_OUT = """\
[2026-12-05 07:27:05,323 I 15068 15068] (raylet) main.cc:711: Setting node ID node_id=d853104d
[2026-12-05 07:27:05,401 E 15068 15068] (raylet) grpc_server.cc:90: a transient error
[2026-12-05 07:27:05,412 I 15068 15098] (raylet) agent_manager.cc:81: Monitor agent process with name dashboard_agent
[2026-12-05 07:27:21,949 C 15068 15068] (raylet) node_manager.cc:3576:  An unexpected system state has occurred. \
You have likely discovered a bug in Ray. Please report this issue at https://github.com/ray-project/ray/issues and \
we'll work with you to fix it. Check failed: statussetor3576.has_value() Timed out waiting for file \
/tmp/ray/session_x/metrics_agent_port_d853104d
*** StackTrace Information ***
/ray/core/src/ray/raylet/raylet(+0x13386ea) [0x557b7850f6ea] ray::operator<<()
"""


def test_the_line_the_raylet_stopped_on_is_found_without_rays_boilerplate():
    assert raylet_fatal(RAYLET_OUT) == ("node_manager.cc:3576: Check failed: statussetor3576.has_value() Timed out "
                                        "waiting for file /tmp/ray/session_x/metrics_agent_port_d853104d")
    running = RAYLET_OUT.split("[2026-12-05 07:27:21")[0]
    assert raylet_fatal(running) == ""  # an error line is not a stop
    assert raylet_fatal(running, errors=True) == "grpc_server.cc:90: a transient error"


def serve_ray(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    """`ranet-edge serve --ray` in a session of its own, to its end; (result, what it left running)."""
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--ray", "--port", str(free_ports(1)[0])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), left_after_stop(proc.pid)


def assert_one_line_naming_the_raylet(result: subprocess.CompletedProcess, left: dict[int, str]) -> str:
    """The error line, checked: exit 2, no traceback, the raylet and Ray's logs named, nothing left."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Ray did not start"), result.stderr
    assert "raylet" in line and "GiB free in /dev/shm" in line, line
    logs = re.search(r"Ray's logs: (\S+)$", line)
    assert logs and os.path.isdir(logs.group(1)), line
    temp_dir = logs.group(1).split("/session_")[0]
    assert left == {}, left
    assert procs.matching(temp_dir) == set(), "a process of that Ray is still running"
    return line


@pytest.mark.needs("ray")
def test_serve_ray_that_does_not_start_within_the_bound_says_why_in_one_line(tmp_path):
    result, left = serve_ray(tmp_path, RANET_EDGE_RAY_START_S="1")
    line = assert_one_line_naming_the_raylet(result, left)
    assert line.startswith("error: Ray did not start within 1 s: "), line
    assert "the GCS" in line and "memory available" in line, line


@pytest.mark.slow
@pytest.mark.needs("ray")
def test_a_raylet_that_gives_up_on_its_slow_agent_is_named_and_started_again(tmp_path):
    """The agent sleeps 25 s before it starts: the raylet aborts waiting for its port file."""
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys, time
        if any(a.endswith("dashboard/agent.py") for a in sys.argv):
            time.sleep(25)
    """))
    path = os.pathsep.join(filter(None, [str(tmp_path / "slow"), os.environ.get("PYTHONPATH")]))
    result, left = serve_ray(tmp_path, PYTHONPATH=path)
    line = assert_one_line_naming_the_raylet(result, left)
    assert "its raylet stopped" in line and "raylet.out says" in line, line
    assert "metrics_agent_port" in line and "too busy" in line, line
    assert result.stderr.count("starting Ray again") == 1, result.stderr  # tried once more, then gave up


@pytest.mark.needs("ray")
@pytest.mark.slow  # a pytest run in a subprocess, Ray started and given up: 5-65 s
def test_a_module_fixture_that_cannot_start_ray_reports_the_cause_once(tmp_path):
    (tmp_path / "test_three.py").write_text(textwrap.dedent(f"""
        import pytest
        from serve_harness import started_once
        from ranet_edge.serve.launcher import Server

        @pytest.fixture(scope="module")
        def started():
            with started_once("Ray", lambda: Server(port={free_ports(1)[0]})) as started:
                yield started

        @pytest.fixture
        def server(started, request):
            return started.get(request)

        def test_a(server): pass
        def test_b(server): pass
        def test_c(server): pass
    """))
    env = {**os.environ, "RANET_EDGE_RAY_START_S": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rs", "test_three.py"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    if not run.stdout and not run.stderr:
        # Seen about once in five runs on a loaded 2-core machine: the inner pytest exits 1 about
        # 60 s later having printed nothing at all (cause not found; issue 29's closing note).
        # What this test checks is the report, so such a run is done again, once.
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    out = run.stdout
    assert re.search(r"\b1 error\b", out) and re.search(r"\b2 skipped\b", out), (run.returncode, out, run.stderr[-3000:])
    assert out.count("Ray did not start within 1 s") == 1, out  # the cause in full, once
    assert "Traceback" not in out and "raylet" in out, out
    assert "Ray did not start: see the first error of this module (test_a)" in out, out

"""`ranet-edge serve` on Ray as a user runs it: a subprocess that starts its own Ray, prints its
URL, answers, and stops on every signal a user sends it: SIGINT to its whole process group (a
terminal's Ctrl-C), SIGINT to the main process only, SIGTERM (a service manager). Each case
runs a real server in a session of its own (so the test can signal its group and, whatever
happens, kill all of it), checks the exit code, that requests in flight when the signal lands
are answered or refused with 503 (never cut without a status), and that no process is left.

The command line of a Ray server is built in one place: :func:`ray_serve_cmd`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from serve_harness import Running, assert_stopped_cleanly, post, running_server, stop_with

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed; install the ray extra: pip install 'ranet-edge[ray]'",
                allow_module_level=True)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes through /proc")

START_S = 240.0  # Ray's start on a busy 2-core machine: ~30 s, at worst a few times that


def ray_serve_cmd(*args: str) -> list[str]:
    """The command line of `ranet-edge serve` on Ray: the one place that builds it."""
    return [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--ray", *args]


@contextlib.contextmanager
def running_ray_server(tmp_path: Path, *args: str) -> Iterator[Running]:
    with running_server(tmp_path, ray_serve_cmd, *args, start_s=START_S) as srv:
        yield srv


@pytest.mark.slow  # a Ray server each
@pytest.mark.parametrize("ingress, how", [("proxy", "group"), ("proxy", "main-int"), ("proxy", "main-term"),
                                          ("haproxy", "group")])
def test_serve_stops_on_every_signal_with_requests_in_flight(tmp_path, ingress, how):
    with running_ray_server(tmp_path, *(["--haproxy"] if ingress == "haproxy" else [])) as srv:
        slow_status, _, _ = stop_with(srv, how)
        assert slow_status in (200, 503), slow_status
        assert_stopped_cleanly(srv)


@pytest.mark.slow  # a Ray server
def test_serve_command_starts_answers_and_stops_on_ctrl_c(tmp_path):
    """--haproxy, SIGINT to the main process: also what it prints and answers; --slo-ms on
    the replicas (each moves along the ladder on its own)."""
    with running_ray_server(tmp_path, "--max-batch", "16", "--haproxy", "--max-body-bytes", "20000",
                            "--slo-ms", "2000") as srv:
        printed = srv.stdout()
        assert f"ranet-edge serving at {srv.url}\n" in printed
        assert "6 exits, 10 classes" in printed and "iso-accuracy (default)" in printed
        assert f"POST {srv.url}/v1/classify" in printed and "ingress    HAProxy" in printed
        model = json.loads(urllib.request.urlopen(f"{srv.url}/v1/model", timeout=30).read())
        assert model["max_batch"] == 16 and model["graph"] == "chain"
        assert model["slo_ms"] == 2000 and model["ladder"][0] == "ladder-0"
        with np.load(SAMPLE_IMAGES) as z:
            rgb = z["x"][7]
        chain = ExitChain.load(DEFAULT_BUNDLE)
        png = cv2.imencode(".png", rgb[..., ::-1].copy())[1].tobytes()
        status, body = post(f"{srv.url}/v1/classify", png)  # a request naming no point: a ladder rung
        assert status == 200 and body["operating_point"] in model["ladder"]
        want = chain.predict(chain.preprocess(rgb[None]), body["operating_point"])
        assert body["predictions"][0]["label"] == int(want.labels[0])
        assert body["predictions"][0]["exit"] == int(want.exits[0])
        status, body = post(f"{srv.url}/v1/classify?operating_point=iso-accuracy", png)  # a named point keeps it
        want = chain.predict(chain.preprocess(rgb[None]))
        assert status == 200 and body["operating_point"] == "iso-accuracy"
        assert body["predictions"][0]["label"] == int(want.labels[0])
        assert body["predictions"][0]["exit"] == int(want.exits[0])
        status, body = post(f"{srv.url}/v1/classify", b"\0" * 20001)
        assert status == 413 and "limit of 20000 bytes" in body["error"]
        slow_status, _, _ = stop_with(srv, "main-int", images=4)  # bodies under the 20000-byte limit
        assert slow_status in (200, 503), slow_status
        assert_stopped_cleanly(srv)


def test_serve_ray_refuses_a_port_it_cannot_use_before_ray_starts(tmp_path):
    """The installed command in a process of its own: --ray with a port the OS would pick (Serve's
    proxy cannot report it) or a port in use is a one-line error, exit code 2, before Ray starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        for port, says in ((0, "--ray needs a fixed --port"), (taken, f"cannot listen on 127.0.0.1:{taken}")):
            res = subprocess.run(ray_serve_cmd("--port", str(port)), capture_output=True, text=True, timeout=120,
                                 cwd=tmp_path)
            assert res.returncode == 2, res.stderr
            last = res.stderr.strip().splitlines()[-1]  # after "starting Ray ...": the check comes first
            assert last.startswith("error:") and says in last and "Traceback" not in res.stderr, res.stderr
            assert res.stdout == ""  # never got as far as "ranet-edge serving at"

"""`ranet-edge serve` as a user runs it: a subprocess that starts its own Ray, prints its URL,
answers, and shuts down cleanly on Ctrl-C (SIGINT). It runs with --haproxy, so this file
covers the HAProxy ingress and test_serve.py Serve's own proxy."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed; install the serve extra: pip install 'ranet-edge[serve]'",
                allow_module_level=True)

pytestmark = pytest.mark.slow


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_command_starts_answers_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("ranet-edge")
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--max-batch", "16", "--haproxy",
                             "--max-body-bytes", "20000"], stdout=out, stderr=err,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url, deadline = None, time.monotonic() + 150
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            out.seek(0)
            url = next((line.split()[-1] for line in out if line.startswith("ranet-edge serving at ")), None)
        assert url == f"http://127.0.0.1:{port}", (Path(tmp_path / "out").read_text(), Path(tmp_path / "err").read_text())
        out.seek(0)
        printed = out.read()
        assert "6 exits, 10 classes" in printed and "iso-accuracy (default)" in printed
        assert f"POST {url}/v1/classify" in printed and "Press Ctrl-C to stop." in printed
        assert "ingress    HAProxy" in printed
        model = json.loads(urllib.request.urlopen(f"{url}/v1/model", timeout=30).read())
        assert model["max_batch"] == 16 and model["graph"] == "chain"
        with np.load(SAMPLE_IMAGES) as z:
            rgb = z["x"][7]
        chain = ExitChain.load(DEFAULT_BUNDLE)
        want = chain.predict(chain.preprocess(rgb[None]))
        status, body = post(f"{url}/v1/classify", cv2.imencode(".png", rgb[..., ::-1].copy())[1].tobytes())
        assert status == 200 and body["predictions"][0]["label"] == int(want.labels[0])
        assert body["predictions"][0]["exit"] == int(want.exits[0])
        status, body = post(f"{url}/v1/classify", b"\0" * 20001)
        assert status == 413 and "limit of 20000 bytes" in body["error"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.seek(0)
    stderr = err.read()
    assert "shutting down" in stderr and stderr.rstrip().endswith("stopped"), stderr
    assert "Traceback" not in stderr and "INFO" not in stderr
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(f"{url}/v1/health", timeout=5)

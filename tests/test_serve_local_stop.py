"""The one-process server under a full queue and when it is stopped: 503 with Retry-After at
capacity, 413 past the queue, and requests in flight at a signal answered before it exits."""
from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest
from serve_harness import assert_stopped_cleanly, stop_with
from serve_local_support import local_server, png, posted_at_once, request

from ranet_edge.assets import SAMPLE_IMAGES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes through /proc")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:40]


def test_overload_gets_503_with_retry_after(tmp_path, sample):
    """40 requests of 16 images at once against a queue of 32 images: some are refused at once
    with 503 and Retry-After, the others answered; a request larger than the queue gets 413."""
    body = json.dumps([base64.b64encode(png(im)).decode() for im in sample[:16]]).encode()
    with local_server(tmp_path, "--max-queue", "32", "--no-access-log") as srv:
        answers = posted_at_once(srv.port, "/v1/classify", body, 40)
        statuses = [int(a.split(b" ", 2)[1]) for a in answers]
        assert set(statuses) == {200, 503}, statuses
        for a in answers:
            if a.startswith(b"HTTP/1.1 503"):
                assert b"retry-after: 1\r\n" in a.lower() and b"at capacity" in a
        status, _, raw = request("POST", f"{srv.url}/v1/classify", json.dumps(
            [base64.b64encode(png(im)).decode() for im in sample[:33]]).encode(), {"Content-Type": "application/json"})
        assert status == 413, raw


# --------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("how", ["group", pytest.param("main-int", marks=pytest.mark.slow),
                                 pytest.param("main-term", marks=pytest.mark.slow)])
def test_drains_on_signals_with_requests_in_flight(tmp_path, how):
    with local_server(tmp_path, "--no-access-log") as srv:
        printed = srv.stdout()
        assert f"ranet-edge serving at {srv.url}\n" in printed and "Press Ctrl-C to stop." in printed
        slow_status, _, took = stop_with(srv, how)
        assert slow_status == 200, slow_status  # in flight at the signal: answered, not dropped
        assert_stopped_cleanly(srv)

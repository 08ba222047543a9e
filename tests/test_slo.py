"""`serve --slo-ms`: the controller on an injected clock and fake timings (exact), the engine
moving requests along the shipped ladder, bad flags refused in one line, and (slow) a real
server overloaded until it answers at cheaper rungs and says so in its answers and /metrics."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import ConfigError
from ranet_edge.runtime.evaluation.ladder import ladder_names

pytestmark = pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None,
                                reason="serving needs the serve extra: pip install 'ranet-edge[serve]'")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _controller(clock=None, slo_ms=10.0, below=(True, True, False)):
    from ranet_edge.serve.slo import Rung, SloController

    z = np.zeros(3, np.float32)
    rungs = [Rung(f"ladder-{i}", z + i / 10, z, ratio, b) for i, (ratio, b) in enumerate(zip((1.0, 2.0, 4.0), below))]
    # 3 exits on 3 graphs; graph 0 costs 0.1 ms per row, graphs 1 and 2 0.2 ms each, nothing per run
    return SloController(rungs, slo_ms, [0, 1, 2], [0.0, 0.0, 0.0], [0.1, 0.2, 0.2], 64, clock or Clock())


def test_controller_picks_the_most_accurate_rung_that_fits():
    c = _controller()
    # before any answer, rung i costs ratio * graph 0's ms: 0.1, 0.2, 0.4 ms per image; budget 0.8 * 10 = 8 ms
    assert [c.rung_time(i, 1) for i in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert c.choose([10, 0, 0], 10, 1.0, 0.5) == 2  # 1 + 10 * 0.4 = 5 ms
    assert c.choose([30, 0, 0], 30, 1.0, 0.5) == 1  # top: 1 + 12 = 13 > 8; rung 1: 1 + 6 = 7
    assert c.choose([64, 0, 0], 64, 0.0, 0.0) == 0  # rung 1: 12.8 ms; nothing fits: the floor
    # the youngest row of a long queue 0 counts too: the batch alone would fit at the top
    assert c.choose([41, 0, 0], 8, 0.0, 0.0) == 0 and c.choose([15, 0, 0], 8, 0.0, 0.0) == 2
    # work already past graph 0 is ahead of every batch: 12 rows at graph 1 cost 12 * (0.2 + 0.2) ms
    assert c.ahead_ms([0, 12, 0]) == pytest.approx(4.8)
    assert c.choose([10, 12, 0], 10, 0.0, 0.0) == 1
    assert c.batches == [2, 2, 2]


def test_controller_follows_the_engines_timings_and_answers():
    c = _controller()
    c.observe_graph(0, 10, 10 * 0.3e-3)  # graph 0 took 3x its prediction: its factor moves a tenth of the way (log)
    assert c.slow[0] == pytest.approx(3 ** 0.1) and c.graph_time(0, 1) == pytest.approx(0.1 * 3 ** 0.1)
    c.slow[0] = 1.2
    assert c.rung_time(1, 1) == pytest.approx(2 * 0.12)
    # rung 1 answers 64 images: half leave at exit 0, half at exit 2 -> reach [1, .5, .5]
    c.observe_exits(1, np.array([0, 2] * 32))
    assert c.seen[1] == 64 and c.reach[1] == pytest.approx([1, 0.5, 0.5])
    assert c.rung_time(1, 1) == pytest.approx(0.12 + 0.5 * 0.2 + 0.5 * 0.2)
    assert c.rung_time(2, 1) == pytest.approx(4 * 0.12)  # rung 2 not seen yet: still its stored ratio
    c.observe_exits(None, np.array([2] * 512))  # a request that named a point: only the mix ahead learns
    assert c.seen[2] == 0 and c.all_reach == pytest.approx([1, 1, 1])


def test_a_run_costs_once_per_batch():
    """Graph time is a line in its rows, max_batch rows a run: full batches cost less per row."""
    from ranet_edge.serve.slo import Rung, SloController

    z = np.zeros(2, np.float32)
    c = SloController([Rung("ladder-0", z, z, 1.0, True), Rung("ladder-1", z, z, 2.0, False)], 10.0, [0, 1],
                      [1.0, 0.5], [0.1, 0.1], 64, Clock())
    assert c.graph_time(0, 1) == pytest.approx(1.1) and c.graph_time(0, 64) == pytest.approx(7.4)
    assert c.graph_time(0, 65) == pytest.approx(2 + 6.5)
    assert c.admits(63, [1, 0]) and not c.admits(64, [1, 0])  # 8 ms of budget
    c.observe_exits(1, np.array([1] * 64))  # rung 1: every image to graph 1
    assert c.rung_time(1, 64) == pytest.approx(7.4 + 0.5 + 6.4)


def test_admission_and_time_below_default():
    clock = Clock()
    c = _controller(clock)
    assert c.admits(1, [79, 0, 0]) and not c.admits(1, [80, 0, 0])  # 80 * 0.1 ms = 8 ms at the floor
    assert not c.admits(1, [0, 40, 0])  # 40 rows at graph 1 cost 16 ms
    c.slow[:] = 1000.0  # a factor learnt on a starved machine: an idle engine still admits, to learn again
    assert c.admits(500, [0, 0, 0]) and not c.admits(1, [1, 0, 0])
    for _ in range(200):
        c.observe_graph(0, 1, 0.1e-3)  # runs as predicted: the factor comes back
    assert c.slow[0] == pytest.approx(1.0, rel=1e-3)
    c.slow[:] = 1.0
    c.choose([64, 0, 0], 64, 0.0, 0.0)  # -> floor (below the default)
    clock.t += 0.25
    assert c.time_below_default() == pytest.approx(0.25)
    c.choose([1, 0, 0], 1, 0.0, 0.0)  # -> top (not below): the 0.25 s are counted, no more after
    clock.t += 5.0
    assert c.time_below_default() == pytest.approx(0.25)
    c.choose([64, 0, 0], 64, 0.0, 0.0)
    clock.t += 30.0  # an idle server: a gap counts at most MAX_GAP_S
    assert c.time_below_default() == pytest.approx(1.25)


def test_precheck_sheds_before_decoding():
    from types import SimpleNamespace

    from ranet_edge.serve.slo import precheck
    from ranet_edge.serve.stage_engine import Overloaded

    engine = SimpleNamespace(slo=_controller(), queued=[0, 0, 0])
    precheck(engine, None, 5.0)
    precheck(engine, "p0.5", 50.0)  # a request naming a point is not the controller's
    with pytest.raises(Overloaded, match="objective of 10 ms"):
        precheck(engine, None, 10.0)  # waited the objective already
    engine.queued = [80, 0, 0]  # 81 images at the floor: 8.1 ms > 8
    with pytest.raises(Overloaded, match="even at ladder-0"):
        precheck(engine, None, 0.0)
    precheck(SimpleNamespace(slo=None, queued=[10 ** 6]), None, 1e9)  # without --slo-ms: nothing
    engine.queued = [0, 0, 0]
    engine.slo.scale = 0.5  # answers have missed: the wait a request may have had halves with the budget
    precheck(engine, None, 4.9)
    with pytest.raises(Overloaded, match="objective of 10 ms"):
        precheck(engine, None, 5.0)


def test_the_budget_learns_from_the_answers_own_times():
    """Each answer's time from arrival (the HTTP side's measure) steps the budget's factor:
    down on a miss (past MISS_AT of the objective), back up on a hit, steady at a 1% miss rate."""
    from ranet_edge.serve.slo import MIN_SCALE, MISS_AT, MISS_CUT, TARGET_MISS

    c = _controller()  # 10 ms objective, 8 ms for the engine
    c.observe_total(MISS_AT * 10.0 - 0.01)  # within
    assert c.scale == 1.0
    c.observe_total(MISS_AT * 10.0 + 0.01)
    assert c.scale == pytest.approx(MISS_CUT) and c.budget_ms() == pytest.approx(8 * MISS_CUT)
    for _ in range(100):
        c.observe_total(50.0)
    assert c.scale == MIN_SCALE and not c.admits(1, [17, 0, 0])  # 1.6 ms: 16 images at the floor
    for _ in range(10_000):
        c.observe_total(3.0)
    assert c.scale == 1.0
    c.scale = 0.5
    for i in range(10_000):  # one miss in a hundred: the factor stays where it is
        c.observe_total(11.0 if i % round(1 / TARGET_MISS) == 0 else 3.0)
    assert c.scale == pytest.approx(0.5, rel=0.02)


def test_the_event_loops_lag_comes_out_of_the_budget():
    """The one-process server hands the controller its event loop's lag (loop_lag.py): a
    request waits about that long before its handler and again after its answer."""
    from types import SimpleNamespace

    from ranet_edge.serve.slo import precheck
    from ranet_edge.serve.stage_engine import Overloaded

    c = _controller()
    assert c.choose([10, 0, 0], 10, 1.0, 0.5) == 2 and c.admits(1, [79, 0, 0])  # 8 ms for the engine
    c.loop_lag_ms = 2.0  # 8 - 2 * 2 = 4 ms left
    assert c.budget_ms() == pytest.approx(4.0)
    assert c.choose([10, 0, 0], 10, 1.0, 0.5) == 1  # top: 1 + 4 = 5 > 4; rung 1: 1 + 2 = 3
    assert c.admits(1, [39, 0, 0]) and not c.admits(1, [40, 0, 0])
    engine = SimpleNamespace(slo=c, queued=[0, 0, 0])
    precheck(engine, None, 7.9)
    with pytest.raises(Overloaded):
        precheck(engine, None, 8.0)  # 8 ms since the handler ran, 2 ms before it: the objective


def test_ladder_of_refuses_bad_settings(tmp_path):
    from ranet_edge.runtime import OperatingPoint
    from ranet_edge.serve.settings import ServeSettings
    from ranet_edge.serve.slo import ladder_of

    p = OperatingPoint([0.5, -np.inf], "t", 0.5, 1.0, 0.1)
    ladder = {"ladder-0": p, "ladder-1": p, "ladder-2": p, "iso": p}
    assert ladder_of(ladder, None, None) == []
    assert ladder_of(ladder, 20.0, None) == ["ladder-0", "ladder-1", "ladder-2"]
    assert ladder_of(ladder, 20.0, "ladder-1") == ["ladder-1", "ladder-2"]
    for args, msg in [((ladder, 20.0, "iso"), "--min-point 'iso' is not a rung"),
                      (({"iso": p}, 20.0, None), "this bundle has none"), ((ladder, None, "ladder-1"), "add --slo-ms"),
                      ((ladder, -1.0, None), "> 0")]:
        with pytest.raises(ConfigError, match=msg):
            ladder_of(*args)
    with pytest.raises(ConfigError, match="slo_ms"):
        ServeSettings(slo_ms=0)
    assert ServeSettings.from_dict({"slo-ms": "25", "min-point": "ladder-2"}).slo_ms == 25.0


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], result.output


def test_serve_refuses_bad_slo_flags(run, tmp_path):
    no_ladder = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, no_ladder, ignore=shutil.ignore_patterns("thresholds.json"))
    _assert_one_line_error(run("serve", "--slo-ms", "0"), "--slo-ms", "> 0")
    _assert_one_line_error(run("serve", "--slo-ms", "20", "--min-point", "iso-accuracy"), "not a rung of the ladder")
    _assert_one_line_error(run("serve", "--min-point", "ladder-1"), "add --slo-ms")
    _assert_one_line_error(run("serve", no_ladder, "--slo-ms", "20"), "has none", "--ladder 8")


def test_engine_moves_auto_requests_along_the_ladder_and_keeps_named_points():
    """The real engine on the shipped bundle applies the rung its controller picks (scripted
    here) to requests naming no point; a request naming a point keeps it; every answer
    names its point and equals predict at that point."""
    from ranet_edge.serve.engine import ServedModel
    from ranet_edge.serve.settings import ServeSettings
    from ranet_edge.serve.stage_engine import StageEngine

    model = ServedModel(ServeSettings(slo_ms=1000.0, max_batch=16, max_queue=4096))
    names = ladder_names(model.chain.operating_points)
    with np.load(SAMPLE_IMAGES) as z:
        x = model.chain.preprocess(z["x"][:64])

    async def go():
        engine = StageEngine(model)
        want = [0]
        engine.slo.choose = lambda queued, batch, head, tail: want[0]  # the controller is tested above
        slow = await asyncio.gather(*(engine.classify(x[i:i + 4], None) for i in range(0, 64, 4)))
        seen = engine.slo.seen.copy()
        want[0] = len(names) - 1
        fast = await engine.classify(x[:8], None)
        named = await engine.classify(x[:8], "p0.5")
        await engine.close(5)
        return slow, fast, named, seen

    slow, fast, named, seen = asyncio.run(go())
    assert {a.operating_point for a in slow} == {names[0]} and seen[0] == 64  # the answers fed the controller
    assert all(a.exits.max() == 0 for a in slow)
    assert fast.operating_point == names[-1] and named.operating_point == "p0.5"
    for a, xs in [(slow[0], x[:4]), (fast, x[:8]), (named, x[:8])]:
        ref = model.chain.predict(xs, a.operating_point)
        np.testing.assert_array_equal(a.exits, ref.exits)
        np.testing.assert_array_equal(a.labels, ref.labels)


def test_v2_and_grpc_responses_name_the_point():
    from ranet_edge.serve import oip
    from ranet_edge.serve.rows import Answer

    answer = Answer(np.array([3]), np.array([0]), np.array([0.9], np.float32), np.zeros((1, 10), np.float32), 1.0,
                    operating_point="ladder-2")
    req = oip.InferRequest(None, np.zeros((1, 3, 32, 32), np.float32), None, (oip.RequestedOutput("label", False),))
    body, _ = oip.rest_infer_response(req, answer, "ranet-edge")
    assert json.loads(body)["parameters"] == {"operating_point": "ladder-2"}
    pytest.importorskip("grpc")
    from ranet_edge.serve.grpc_service import infer_response

    assert infer_response(req, answer, "ranet-edge").parameters["operating_point"].string_param == "ladder-2"


# --------------------------------------------------------------------------- a real server, overloaded
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes through /proc")
def test_overloaded_server_moves_to_cheaper_points_and_names_them(tmp_path):
    from serve_harness import running_server
    from serve_local_support import posted_at_once

    with np.load(SAMPLE_IMAGES) as z:
        ims = z["x"][:16]
    body = json.dumps([base64.b64encode(cv2.imencode(".png", im[..., ::-1])[1].tobytes()).decode()
                       for im in ims]).encode()
    cmd = lambda *a: [str(Path(sys.executable).with_name("ranet-edge")), "serve", *a]  # noqa: E731
    names = ladder_names(__import__("ranet_edge.runtime", fromlist=["ExitChain"]).ExitChain.load(
        DEFAULT_BUNDLE).operating_points)
    with running_server(tmp_path, cmd, "--slo-ms", "40", "--no-access-log") as srv:
        quiet = []  # a quiet server answers at the top rung, once its first runs have warmed it
        while names[-1] not in quiet and len(quiet) < 12:
            (answer,) = posted_at_once(srv.port, "/v1/classify", body, 1)
            quiet.append(json.loads(answer.split(b"\r\n\r\n", 1)[1])["operating_point"])
        assert names[-1] in quiet, quiet
        answers = [a for _ in range(3) for a in posted_at_once(srv.port, "/v1/classify", body, 60)]
        statuses = [int(a.split(b" ", 2)[1]) for a in answers]
        points = [json.loads(a.split(b"\r\n\r\n", 1)[1])["operating_point"] for a in answers
                  if a.startswith(b"HTTP/1.1 200")]
        assert set(statuses) <= {200, 503} and points, statuses
        cheaper = [p for p in points if names.index(p) < len(names) - 1]
        assert cheaper, points  # 960 images at once: the top rung cannot answer them all within 40 ms
        for a in answers:
            if a.startswith(b"HTTP/1.1 503"):  # the objective's refusal (or, as ever, a full --max-queue)
                assert b"retry-after: 1\r\n" in a.lower() and (b"--slo-ms" in a or b"at capacity" in a), a
        time.sleep(0.2)
        import urllib.request

        text = urllib.request.urlopen(f"{srv.url}/metrics", timeout=30).read().decode()
        for p in set(points):
            line = next(ln for ln in text.splitlines() if ln.startswith(f'ranet_answers_total{{operating_point="{p}"}}'))
            assert float(line.split()[-1]) == points.count(p) + quiet.count(p), line
        below = next(ln for ln in text.splitlines() if ln.startswith("ranet_slo_below_default_seconds_total"))
        assert float(below.split()[-1]) > 0, below
        factor = next(ln for ln in text.splitlines() if ln.startswith("ranet_slo_budget_factor "))
        assert 0.2 <= float(factor.split()[-1]) <= 1.0, factor  # the learnt factor, within its bounds

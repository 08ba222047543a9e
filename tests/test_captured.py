"""The captured executor (runtime/executors/captured.py, _layout.py) on the CPU provider:
real sessions, real IOBinding, CPU OrtValues standing in for the device buffers. What needs a
GPU (CUDA graph capture, the shared stream) is measured by benchmarks/gpu/check.sh."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import InputError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors._layout import FixedLayout, StageSpec, TensorSpec
from ranet_edge.runtime.executors._onnx_proto import scan_ops
from ranet_edge.runtime.executors.capture_check import (
    capture_providers,
    op_blockers,
    profile_blockers,
    profile_run,
    shape_blockers,
)
from ranet_edge.runtime.executors.captured import CapturedExecutor

BUCKETS = [1, 2, 4, 8, 16]


@pytest.fixture(scope="module")
def chains():
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this checkout ships no default bundle")
    return ExitChain.load(DEFAULT_BUNDLE), ExitChain.load(DEFAULT_BUNDLE, capture=True, buckets=BUCKETS)


@pytest.fixture(scope="module")
def x(chains):
    with np.load(SAMPLE_IMAGES) as z:
        return chains[0].preprocess(z["x"][:45])


def toy_plan(buckets=(1, 4, 16)) -> FixedLayout:
    img = TensorSpec("image", (3, 8, 8), "float32")
    s0 = StageSpec("a.onnx", ("image",), (TensorSpec("l0", (10,), "float32"), TensorSpec("m", (4, 4, 4), "float16")),
                   ("l0",), (0,), ("image", "m"))
    s1 = StageSpec("b.onnx", ("m",), (TensorSpec("l1", (10,), "float32"), TensorSpec("l2", (10,), "float32")),
                   ("l1", "l2"), (1, 2), ())
    s2 = StageSpec("c.onnx", ("image",), (TensorSpec("l3", (10,), "float32"),), ("l3",), (3,), ())
    s1 = StageSpec(s1.path, s1.inputs, s1.outputs, s1.logits, s1.exits, ("image",))
    return FixedLayout([s0, s1, s2], img, 10, buckets)


def test_plan_buffers_sizes_and_ids():
    plan = toy_plan()
    bufs = {b.key: b for b in plan.buffers()}
    assert len(bufs) == len(plan.buffers())  # every buffer once
    assert bufs[("env", 0, 4, "image")].shape == (4, 3, 8, 8)
    assert bufs[("out", 0, 16, "m")].shape == (16, 4, 4, 4) and bufs[("out", 0, 16, "m")].dtype == "float16"
    assert bufs[("env", 1, 16, "m")].nbytes == 16 * 64 * 2
    assert ("env", 2, 1, "image") in bufs and ("env", 2, 1, "m") not in bufs  # only what a later graph reads
    assert bufs[("index", 4)].shape == (4,) and bufs[("index", 4)].dtype == "int64"
    assert plan.source(1, 4, "image") == ("env", 1, 4, "image") and plan.source(0, 4, "m") == ("out", 0, 4, "m")
    assert [plan.graph_id(b) for b in plan.buckets] == [0, 1, 2]
    ids = [plan.gather_id(b, c) for b, c in plan.gather_pairs()]
    assert sorted(ids) == list(range(6))  # one id per (bucket, next bucket <= bucket) pair
    ins, outs = plan.gather_io(1, 16, 4)
    assert ins == [("env", 1, 16, "image"), ("index", 4)]  # the host writes the kept rows' indices
    assert outs == [("env", 2, 4, "image")]
    assert plan.total_bytes() == sum(b.nbytes for b in plan.buffers())


def test_bucket_choice():
    plan = toy_plan((1, 4, 16))
    from ranet_edge.runtime.executors.buckets import Buckets

    buckets = Buckets(sizes=plan.buckets)  # what the captured executor pads with
    assert [buckets.size(n) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    with pytest.raises(InputError, match="largest bucket"):
        buckets.size(17)
    with pytest.raises(InputError, match="no larger"):
        plan.gather_id(4, 16)
    with pytest.raises(InputError, match="positive"):
        toy_plan(())


def test_capture_run_matches_host_path(chains, x):
    host, fixed = chains
    assert fixed.executor.kind == "captured" and fixed.executor.exclusive
    for a, b in zip(host.run_all(x), fixed.run_all(x)):  # 45 rows: chunks of the largest bucket, 16
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for t in [0.5, 0.9, *(rng.uniform(0.3, 1.0, 5).tolist() for _ in range(4))]:
        p, q = host.predict(x, t), fixed.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_allclose(p.confidences, q.confidences, rtol=1e-6)
        np.testing.assert_allclose(p.probabilities, q.probabilities, rtol=1e-5, atol=1e-7)
    for n in (1, 3, 16):
        p, q = host.predict(x[:n], 0.8), fixed.predict(x[:n], 0.8)
        np.testing.assert_array_equal(p.exits, q.exits)


def test_ties_leave_as_on_the_host(chains, x):
    """Thresholds equal to samples' confidences (ties leave): the one rule decides on the host
    from the logits buffers, so the exits are the host path's exactly."""
    host, fixed = chains
    conf0 = host.predict(x[:16], 0.0).confidences  # every sample leaves at exit 0: its confidences
    for t in conf0[:4]:
        thr = [float(t)] + [1.0] * (host.num_exits - 1)
        p, q = host.predict(x[:16], thr), fixed.predict(x[:16], thr)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.confidences, q.confidences)
        assert (q.exits == 0).sum() >= 1  # the tying sample left


def test_predict_stages_and_bucket_sequence(chains, x, monkeypatch):
    host, fixed = chains
    ran = []
    real = CapturedExecutor._go
    monkeypatch.setattr(CapturedExecutor, "_go", lambda self, key: (ran.append(key), real(self, key))[1])
    got = list(fixed.predict_stages(x[:13], 0.7))
    want = list(host.predict_stages(x[:13], 0.7))
    assert sum(len(s.rows) for s in got) == 13
    np.testing.assert_array_equal(np.concatenate([s.rows for s in got]), np.concatenate([s.rows for s in want]))
    np.testing.assert_array_equal(np.concatenate([s.exits for s in got]), np.concatenate([s.exits for s in want]))
    graphs = [k for k in ran if k[0] == "graph"]
    assert graphs[0] == ("graph", 0, 16)  # 13 rows run at bucket 16
    left = 13
    for part, key in zip(got, graphs):  # each next bucket is the smallest holding the survivors
        assert key[2] == min(b for b in BUCKETS if b >= left)
        left -= len(part.rows)
    for key in (k for k in ran if k[0] == "gather"):
        assert key[3] <= key[2]


def test_buffers_keep_their_addresses(chains, x):
    _, fixed = chains
    plan = fixed.executor
    before = {k: v.data_ptr() for k, v in plan.buf.items()}
    fixed.predict(x[:9], 0.6)
    fixed.run_all(x[:3])
    assert {k: v.data_ptr() for k, v in plan.buf.items()} == before
    sess, io, _ = plan._run[("graph", 0, 16)]
    outs = io.get_outputs()
    assert [o.data_ptr() for o in outs] == [plan.buf[("out", 0, 16, n.name)].data_ptr()
                                            for n in plan.layout.stages[0].outputs]


def test_load_report_lists_every_session(chains):
    _, fixed = chains
    rep = fixed.load_report.capture
    assert rep is not None and rep.requested is False and not rep.all_captured
    names = [g.name for g in rep.graphs]
    assert names[:6] == [f"stage{i}.onnx" for i in range(6)]
    assert sum(n.startswith("gather after") for n in names) == 5 and len(names) == 11
    assert rep.buffers_bytes == fixed.executor.layout.total_bytes() > 0
    assert rep.to_dict()["graphs"][0]["ids"] == len(BUCKETS)
    assert fixed.load_report.warm_sizes == tuple(BUCKETS)


def test_capture_refuses_static_and_unbucketed():
    with pytest.raises(InputError, match="buckets"):
        ExitChain.load(DEFAULT_BUNDLE, capture=True, buckets=False, warmup=False)


def test_capture_providers_options():
    out = capture_providers([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], 1234)
    assert out[0] == ("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1", "user_compute_stream": "1234"})
    assert out[1] == "CPUExecutionProvider"
    assert capture_providers(["CUDAExecutionProvider"], None)[0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})


def test_blockers_nonzero_and_subgraphs():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    inner = helper.make_graph([helper.make_node("Compress", ["x", "m"], ["z"])], "inner", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("NonZero", ["x"], ["y"]),
             helper.make_node("If", ["c"], ["w"], then_branch=inner, else_branch=inner)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, c], [y]))
    ops = scan_ops(model.SerializeToString())
    assert ops == ["NonZero", "If", "Compress", "Compress"]
    lines = op_blockers(ops)
    assert any(line.startswith("NonZero node x1") for line in lines) and any("If" in line for line in lines)
    assert any(line.startswith("Compress node x2") for line in lines)
    assert onnx is not None


def test_blockers_from_a_real_profile():
    """One real CPU run, judged against the CUDA provider: every kernel is a node off the device."""
    path = DEFAULT_BUNDLE / "stage0.onnx"
    ops = scan_ops(path)
    assert "Conv" in ops and not op_blockers(ops)  # the shipped graphs have nothing data-dependent
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    feeds = {i.name: np.zeros([1, *i.shape[1:]], np.float32)}
    lines = profile_run(str(path), ort.SessionOptions(), ["CPUExecutionProvider"], feeds, "CUDAExecutionProvider")
    assert lines and all("on CPUExecutionProvider" in line for line in lines)
    assert any("Conv on CPUExecutionProvider" in line for line in lines)
    assert profile_run(str(path), ort.SessionOptions(), ["CPUExecutionProvider"], feeds, "CPUExecutionProvider") == []
    memcpy = [{"cat": "Node", "name": "m_kernel_time", "args": {"op_name": "MemcpyToHost", "provider": "CUDAExecutionProvider"}}]
    assert profile_blockers(memcpy, "CUDAExecutionProvider") == ["memcpy node: MemcpyToHost on CUDAExecutionProvider (x1 per run)"]
    assert shape_blockers({"a": (None, 3, "h", 4), "b": (None, 3)}) == [
        "shape that changes: a [None, 3, 'h', 4] (dynamic axis besides the batch)"]


def test_scan_ops_refuses_garbage():
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        scan_ops(b"\x0f\xff\xff")


def test_load_report_names_a_nonzero_graph(tmp_path):
    """A bundle whose last graph holds a NonZero node: load(capture=True) reports it for that
    graph in load_report.capture (and nothing for the others)."""
    import hashlib
    import json
    import shutil

    onnx = pytest.importorskip("onnx")
    from onnx import helper

    bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    path = bundle / "stage5.onnx"
    model = onnx.load(str(path))
    first = model.graph.input[0].name
    model.graph.node.append(helper.make_node("NonZero", [first], ["nz"]))  # a side branch (no output)
    path.write_bytes(model.SerializeToString())
    manifest = json.loads((bundle / "manifest.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in [*manifest["graphs"], *manifest["exits"]]:
        if entry.get("path", entry.get("graph")) == "stage5.onnx":
            entry["sha256"] = digest
            if "bytes" in entry:
                entry["bytes"] = path.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    chain = ExitChain.load(bundle, capture=True, buckets=[1, 4], warmup=False)
    rep = chain.load_report.capture
    assert any(b.startswith("stage5.onnx: NonZero node x1") for b in rep.blockers), rep.blockers
    assert not any(b.startswith("stage4.onnx") for b in rep.blockers)

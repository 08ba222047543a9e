"""The device-resident (IOBinding) path, exercised on the CPU provider: same results as the
numpy path, and cached tensors handed between graphs as OrtValues, never as host arrays.
Torch-free: runs on the shipped bundle, in the lean install too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors._onnx_proto import (
    FLOAT,
    FLOAT16,
    IR_VERSION,
    OPSET,
    concat_rows_model,
    gather_model,
    gather_rows_model,
)
from ranet_edge.runtime.executors.device import DeviceExecutor


@pytest.fixture(scope="module")
def bundle() -> Path:
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this checkout ships no default bundle")
    return DEFAULT_BUNDLE


@pytest.mark.parametrize("elem_type", [FLOAT, FLOAT16])
def test_gather_graph_bytes_are_what_onnx_helper_builds(elem_type):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    assert (FLOAT, FLOAT16) == (TensorProto.FLOAT, TensorProto.FLOAT16)
    x = helper.make_tensor_value_info("x", elem_type, None)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", elem_type, None)
    graph = helper.make_graph([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)], "gather_rows", [x, idx], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    assert gather_model(elem_type) == model.SerializeToString()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gather_graph_gathers_rows(dtype):
    sess = ort.InferenceSession(gather_model(FLOAT if dtype == np.float32 else FLOAT16),
                                providers=["CPUExecutionProvider"])
    x = np.arange(5 * 3 * 2, dtype=dtype).reshape(5, 3, 2)
    keep = np.array([4, 0, 2], np.int64)
    np.testing.assert_array_equal(sess.run(None, {"x": x, "idx": keep})[0], x[keep])


def test_runtime_never_imports_onnx():
    code = ("import sys, numpy as np; from ranet_edge.runtime import ExitChain; from ranet_edge.assets import "
            "DEFAULT_BUNDLE; c = ExitChain.load(DEFAULT_BUNDLE, device_io=True); "
            "c.predict(np.zeros((4, *c.input_shape), np.float32), 0.5); print('onnx' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    for path in runtime.rglob("*.py"):
        text = path.read_text()
        assert "import onnx\n" not in text and "from onnx " not in text and "from onnx." not in text, path


def test_device_path_matches_host_path(bundle):
    host = ExitChain.load(bundle)
    dev = ExitChain.load(bundle, device_io=True)
    assert host.executor.kind == "host" and dev.executor.kind == "device"
    with np.load(SAMPLE_IMAGES) as z:
        x = host.preprocess(z["x"][:200])
    for a, b in zip(host.run_all(x), dev.run_all(x)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(10):
        t = rng.uniform(0.3, 1.0, 5).tolist()
        p, q = host.predict(x, t), dev.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.probabilities, q.probabilities)


def test_cached_tensors_stay_ortvalues(bundle, monkeypatch):
    seen: list[type] = []
    real_run, real_take = DeviceExecutor.run, DeviceExecutor.take

    def run(self, g, env):
        seen.extend(type(v) for v in env.values.values())
        logits, out = real_run(self, g, env)
        seen.extend(type(v) for v in out.values.values())
        assert all(isinstance(z, np.ndarray) for z in logits)
        return logits, out

    taken = {"n": 0}

    def take(self, env, keep):
        taken["n"] += 1
        out = real_take(self, env, keep)
        assert all(isinstance(v, ort.OrtValue) for v in out.values.values())
        return out

    monkeypatch.setattr(DeviceExecutor, "run", run)
    monkeypatch.setattr(DeviceExecutor, "take", take)
    chain = ExitChain.load(bundle, device_io=True, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:64])
    res = chain.predict(x, 0.8)
    assert len(set(res.exits.tolist())) > 1
    assert seen and all(t is ort.OrtValue for t in seen)
    assert taken["n"] > 0  # rows were gathered by the Gather session, not by numpy


def _helper_model(nodes, name, inputs, outputs):
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def test_gather_rows_graph_bytes_and_rows():
    """The executors' gather graph: every handed-on tensor's rows moved in one run, bytes as
    onnx.helper builds them."""
    types = [FLOAT, FLOAT16]
    sess = ort.InferenceSession(gather_rows_model(types), providers=["CPUExecutionProvider"])
    x0 = np.arange(20, dtype=np.float32).reshape(5, 4)
    keep = np.array([3, 1, 1], np.int64)  # a padded bucket repeats the last row
    y0, y1 = sess.run(None, {"x0": x0, "x1": x0.astype(np.float16), "idx": keep})
    np.testing.assert_array_equal(y0, x0[keep])
    np.testing.assert_array_equal(y1, x0[keep].astype(np.float16))
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Gather", [f"x{i}", "idx"], [f"y{i}"], axis=0) for i in range(len(types))]
    ins = [helper.make_tensor_value_info(f"x{i}", t, None) for i, t in enumerate(types)]
    ins.append(helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"]))
    outs = [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(types)]
    assert gather_rows_model(types) == _helper_model(nodes, "gather_rows", ins, outs).SerializeToString()


def test_concat_rows_graph_bytes_and_rows():
    """The serving engine's merge on a device: rows of several tensors joined, then picked."""
    sess = ort.InferenceSession(concat_rows_model(FLOAT, 3), providers=["CPUExecutionProvider"])
    parts = [np.full((n, 2), i, np.float32) for i, n in enumerate([2, 1, 3])]
    idx = np.array([0, 2, 3, 5, 5], np.int64)
    (y,) = sess.run(None, {"x0": parts[0], "x1": parts[1], "x2": parts[2], "idx": idx})
    np.testing.assert_array_equal(y, np.concatenate(parts)[idx])
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    names = ["x0", "x1", "x2"]
    nodes = [helper.make_node("Concat", names, ["joined"], axis=0), helper.make_node("Gather", ["joined", "idx"], ["y"], axis=0)]
    ins = [helper.make_tensor_value_info(n, FLOAT, None) for n in names]
    ins.append(helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"]))
    outs = [helper.make_tensor_value_info("y", FLOAT, None)]
    assert concat_rows_model(FLOAT, 3) == _helper_model(nodes, "concat_rows", ins, outs).SerializeToString()


def test_device_executor_merges_rows_of_several_calls(bundle):
    """concat (the serving engine's queues) on device values equals the host executor's."""
    host = ExitChain.load(bundle, warmup=False)
    dev = ExitChain.load(bundle, warmup=False, device_io=True, buckets=True)
    with np.load(SAMPLE_IMAGES) as z:
        x = host.preprocess(z["x"][:20])
    results = []
    for chain in (host, dev):
        ex = chain.executor
        a = ex.run(0, ex.feed(x[:7]))[1]
        b = ex.run(0, ex.feed(x[7:]))[1]
        merged = ex.concat([ex.take(a, np.array([1, 4, 6])), ex.take(b, np.array([0, 12]))])
        assert merged.rows == 5
        logits, _ = ex.run(1, merged)
        results.append(logits)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)

"""A session that ONNX Runtime cannot make says what ONNX Runtime said and the fix that fits the
cause (runtime/session_errors.py), from real failures: a truncated graph, an opset and an IR
version newer than this onnxruntime reads, memory that runs out, a graph compiled for a
provider the session lacks, a plugin provider that fails on its options."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, QNN_BUNDLE
from ranet_edge.errors import BundleError, ProviderError, RanetEdgeError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.files import sha256_file
from ranet_edge.runtime.graphs import open_graphs
from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.providers import session_options
from ranet_edge.runtime.session_errors import load_error, onnxruntime_said

ROOT = Path(__file__).resolve().parents[1]
CPU = "CPUExecutionProvider"
QNN = "QNNExecutionProvider"


def _bundle_with(tmp_path: Path, graph: str, content: bytes) -> Path:
    """A copy of the shipped bundle with ``graph`` replaced by ``content`` and signed again
    (sha256 and size in the manifest), so that only ONNX Runtime can object to it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    (bundle / graph).write_bytes(content)
    data = json.loads((bundle / "manifest.json").read_text())
    digest = sha256_file(bundle / graph)
    for g in data["graphs"]:
        if g["path"] == graph:
            g.update(sha256=digest, bytes=len(content))
    for e in data["exits"]:
        if e["graph"] == graph:
            e["sha256"] = digest
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "[ONNXRuntimeError]" not in msg and "onnxruntime_src" not in msg, msg
    assert isinstance(exc.__cause__, Exception) and "ONNXRuntimeError" in str(exc.__cause__)  # the cause is kept
    return msg


def test_a_truncated_graph_is_a_bundle_error_that_says_re_export(tmp_path):
    data = (DEFAULT_BUNDLE / "stage2.onnx").read_bytes()
    bundle = _bundle_with(tmp_path, "stage2.onnx", data[:len(data) // 3])
    with pytest.raises(BundleError) as info:
        ExitChain.load(bundle, warmup=False)
    msg = _one_line(info.value)
    assert msg.startswith("ONNX Runtime cannot load graph stage2.onnx: Protobuf parsing failed")
    assert "damaged or truncated" in msg and "re-export the bundle" in msg


def test_an_opset_newer_than_onnxruntime_names_both_and_the_fix(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEFAULT_BUNDLE / "stage0.onnx"))
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 99
    bundle = _bundle_with(tmp_path, "stage0.onnx", model.SerializeToString())
    with pytest.raises(BundleError) as info:
        ExitChain.load(bundle, warmup=False)
    msg = _one_line(info.value)
    top = int(msg.split("reads up to opset ")[1].split(":")[0])
    assert 17 <= top < 99, msg
    assert "ValidateOpsetForDomain" not in msg and "Opset 99 is under development" in msg
    assert f"the graph uses opset 99 of ai.onnx, and onnxruntime {ort.__version__} reads up to opset {top}" in msg
    assert "upgrade onnxruntime to a release that supports opset 99" in msg and f"--opset {top}" in msg


def test_an_ir_version_newer_than_onnxruntime_says_upgrade(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEFAULT_BUNDLE / "stage1.onnx"))
    model.ir_version = 99
    bundle = _bundle_with(tmp_path, "stage1.onnx", model.SerializeToString())
    with pytest.raises(BundleError) as info:
        ExitChain.load(bundle, warmup=False)
    msg = _one_line(info.value)
    assert "graph stage1.onnx: Unsupported model IR version: 99, max supported IR version:" in msg
    assert "onnxruntime::Model::Model" not in msg
    assert "upgrade onnxruntime to a release that reads IR version 99" in msg


def test_a_missing_graph_says_the_bundle_lacks_it(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = load_manifest(bundle)  # which names a file missing already: it goes after the check
    (bundle / "stage3.onnx").unlink()
    with pytest.raises(BundleError) as info:
        open_graphs(manifest, lambda entry: [CPU], session_options(None))
    assert "stage3.onnx" in _one_line(info.value) and "the bundle lacks this file" in str(info.value)


def test_a_graph_compiled_for_a_provider_the_session_lacks_is_a_provider_error():
    """The QNN bundle's EPContext graphs on the CPU provider alone: what an app that registered
    the QNN plugin met before runtime/plugins.py found its registration (tests/test_plugins_registered.py)."""
    manifest = load_manifest(QNN_BUNDLE)
    with pytest.raises(ProviderError) as info:
        open_graphs(manifest, lambda entry: [CPU], session_options(None), compiled_for=QNN)
    msg = _one_line(info.value)
    assert msg.startswith("ONNX Runtime cannot load graph stage0.qnn_ctx.onnx on QNNExecutionProvider: EPContext node "
                          "generated by 'QNNExecutionProvider' is not compatible")
    assert "the session was made without QNNExecutionProvider, which this graph is compiled for" in msg
    assert f"`ranet-edge doctor {QNN_BUNDLE} --provider qnn`" in msg and "pip install 'ranet-edge[qnn]'" in msg
    assert "re-export" not in msg
    # the same graph asked for on the CPU: load it with the provider it is compiled for
    entry = manifest.graphs[0]
    with pytest.raises(Exception) as raw:  # noqa: PT011 - onnxruntime's own exception types
        ort.InferenceSession(str(QNN_BUNDLE / entry.compiled_path(QNN)), providers=[CPU])
    err = load_error(entry.compiled_path(QNN), raw.value, "cpu", str(QNN_BUNDLE))
    assert type(err) is ProviderError and "this graph is compiled for QNNExecutionProvider: load it with " \
        "--provider qnn" in str(err) and "--provider cpu`" in str(err), err


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn is not installed")
def test_a_plugin_that_fails_on_its_options_is_a_provider_error():
    with pytest.raises(ProviderError) as info:
        ExitChain.load(QNN_BUNDLE, provider="qnn", warmup=False,
                       provider_options={"backend_path": "/nonexistent/libQnnHtp.so"})
    msg = _one_line(info.value)
    assert "on QNNExecutionProvider: Only one of 'backend_type' and 'backend_path' should be set" in msg, msg
    assert "CreateProvider(" not in msg and "check the provider options" in msg
    assert f"`ranet-edge doctor {QNN_BUNDLE} --provider qnn`" in msg


#: Loads the shipped bundle's graphs with the address space capped a few MB above what the
#: process holds (manifest read and sha256s checked before), raising the cap a little until
#: a load fails; prints the error's class and message.
OOM = """
import re, resource, sys
from ranet_edge.assets import DEFAULT_BUNDLE
from ranet_edge.runtime.graphs import open_graphs
from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.providers import session_options

manifest, so = load_manifest(DEFAULT_BUNDLE), session_options(None)
open_graphs(manifest, lambda e: ["CPUExecutionProvider"], so)  # everything imported and warmed once
for extra in (2, 4, 8, 16):
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (extra << 20), resource.RLIM_INFINITY))
    try:
        open_graphs(manifest, lambda e: ["CPUExecutionProvider"], so)
        err = None
    except Exception as exc:
        err = exc
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if err is not None:
        print(type(err).__name__, "|", err)
        sys.exit(0)
print("loaded every time")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space through /proc and rlimit")
def test_memory_that_runs_out_says_fewer_threads_and_a_smaller_batch():
    r = subprocess.run([sys.executable, "-c", OOM], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    kind, _, msg = r.stdout.strip().splitlines()[-1].partition(" | ")
    assert kind == "RanetEdgeError", r.stdout  # the host's memory: neither the bundle nor a provider
    assert msg.startswith("ONNX Runtime cannot load graph stage") and "bad_alloc" in msg, msg
    assert "out of memory" in msg and "--threads" in msg and "max_batch" in msg and "re-export" not in msg


def test_what_onnxruntime_said_is_trimmed_to_its_sentence():
    """The trimming on the real texts above, and the classes picked for them."""
    def said(text: str) -> str:
        return onnxruntime_said(RuntimeError(text))

    opset = ("[ONNXRuntimeError] : 1 : FAIL : Load model from /b/stage0.onnx failed:/onnxruntime_src/onnxruntime/core/"
             "graph/model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::"
             "unordered_map<std::__cxx11::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const "
             "std::string&, int) ONNX Runtime only *guarantees* support for models stamped with official released onnx "
             "opset versions. Opset 99 is under development. Current official support for domain ai.onnx is till opset 28.")
    assert said(opset).startswith("ONNX Runtime only *guarantees* support")
    assert said("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: std::bad_alloc\n"
                "more") == "Exception during initialization: std::bad_alloc"
    assert said("x" * 500).endswith("...") and len(said("x" * 500)) == 240
    assert said("") == "RuntimeError"
    assert type(load_error("g.onnx", MemoryError(), "cuda")) is ProviderError  # a device's memory
    assert type(load_error("g.onnx", MemoryError(), CPU)) is RanetEdgeError
    assert type(load_error("g.onnx", RuntimeError(opset), CPU)) is BundleError

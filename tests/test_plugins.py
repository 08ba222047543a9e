"""Plugin execution providers and node placement: what runs where is recorded and reported,
a provider that takes nothing is refused with its reason, compiled graphs are signed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, QNN_BUNDLE
from ranet_edge.errors import BundleError, ProviderError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime import plugins as plug
from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.placement import log_reasons, placement_row, require_placement
from ranet_edge.runtime.providers import is_plugin, resolve_provider


def test_cpu_chain_reports_every_node_on_the_cpu():
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    assert [r["graph"] for r in chain.placement] == [g.path for g in chain.manifest.graphs]
    for row in chain.placement:
        assert row["nodes"] > 0 and row["providers"] == {"CPUExecutionProvider": row["nodes"]}
        assert row["share"] == {"CPUExecutionProvider": 1.0} and row["on_cpu"] == {}
    assert chain.placement_lines()[0].startswith("stage0.onnx: ") and "(100%)" in chain.placement_lines()[0]


def test_placement_counts_are_the_graph_nodes():
    """ONNX Runtime's record counts the nodes of the graph as partitioned: the stage graphs of
    the shipped bundle are already optimised, so every node of the file is there."""
    onnx = pytest.importorskip("onnx")
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    for row, entry in zip(chain.placement, chain.manifest.graphs):
        assert row["nodes"] == len(onnx.load(str(DEFAULT_BUNDLE / entry.path)).graph.node)


def test_a_provider_that_takes_no_node_is_refused_naming_why():
    rows = [placement_row("a.onnx", {"QNNExecutionProvider": ["Conv"], "CPUExecutionProvider": ["Gemm"]},
                          "QNNExecutionProvider"),
            placement_row("b.onnx", {"CPUExecutionProvider": ["Conv", "Relu"]}, "QNNExecutionProvider")]
    assert rows[0]["share"] == {"QNNExecutionProvider": 0.5, "CPUExecutionProvider": 0.5}
    assert rows[0]["on_cpu"] == {"Gemm": 1}
    with pytest.raises(ProviderError) as info:
        require_placement(rows, "qnn", "QNNExecutionProvider", lambda path: f"because of {path}")
    msg = str(info.value)
    assert "\n" not in msg and "none of the 2 nodes of b.onnx" in msg and "because of b.onnx" in msg
    require_placement(rows[:1], "qnn", "QNNExecutionProvider", lambda path: "")  # a part is reported, not refused
    require_placement(rows, "cpu", "CPUExecutionProvider", lambda path: "")


def test_log_reasons_reads_what_qnn_logs():
    log = ("2026-12-03 07:54:35.8 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation "
           "FAILED for 1 nodes in OrtNodeUnit (Conv) :\n\tOperator type: Conv Node name: /a/Conv Node index: 0\n"
           "\tREASON : Cannot get shape\n\tOperator type: Relu Node name: /a/Relu Node index: 1\n"
           "\tREASON : Cannot get shape\n\tOperator type: Gemm Node name: g\n\tREASON : Unsupported rank\n")
    assert log_reasons(log) == "Conv/Relu: Cannot get shape; Gemm: Unsupported rank"
    assert log_reasons("nothing here\n") is None


def test_a_plugin_whose_package_is_missing_names_the_install(monkeypatch):
    missing = plug.Plugin("WebGpuExecutionProvider", "no_such_plugin_module_here", "onnxruntime-ep-webgpu", None)
    monkeypatch.setitem(plug.PLUGINS, "WebGpuExecutionProvider", missing)
    if "WebGpuExecutionProvider" in plug.BUILT_IN:
        pytest.skip("this onnxruntime build has WebGPU built in")
    with pytest.raises(ProviderError) as info:
        resolve_provider("webgpu")
    msg = str(info.value)
    assert "\n" not in msg and "onnxruntime-ep-webgpu is not installed" in msg and "pip install" in msg


def test_legacy_names_stay_built_in():
    assert not is_plugin("CPUExecutionProvider")
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    for name in plug.BUILT_IN:
        assert not is_plugin(name)


def test_compiled_graphs_are_signed_like_every_graph(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(QNN_BUNDLE, bundle)
    man = load_manifest(bundle)
    compiled = [c for g in man.graphs for c in g.compiled]
    assert [c.provider for c in compiled] == ["QNNExecutionProvider"] * len(man.graphs)
    assert all(man.graphs[i].compiled_path("QNNExecutionProvider") == c.path for i, c in enumerate(compiled))
    with open(bundle / compiled[2].path, "r+b") as f:  # one byte of the context binary
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match=f"{compiled[2].path} fails its sha256 check"):
        load_manifest(bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data["graphs"][0]["compiled"]["QNNExecutionProvider"]["path"] = "../outside.onnx"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_manifest(bundle, verify=False)


def test_the_cpu_runs_the_qdq_graphs_of_a_qnn_bundle():
    """The QNN bundle's graphs are plain int8 QDQ: the CPU provider loads them, not the
    compiled forms (which only QNN runs)."""
    chain = ExitChain.load(QNN_BUNDLE, warmup=False)
    assert [g.path for g in chain.graphs] == [g.path for g in chain.manifest.graphs]
    assert all(r["providers"] == {"CPUExecutionProvider": r["nodes"]} for r in chain.placement)
    x = chain.preprocess(list(__import__("numpy").load(Path(DEFAULT_BUNDLE).parent / "cifar10-val-500.npz")["x"][:3]))
    assert chain.predict(x).labels.shape == (3,)


def test_doctor_lists_the_plugins():
    from ranet_edge.doctor import diagnose

    rep = diagnose()
    names = [p["provider"] for p in rep.plugins]
    assert names == list(plug.PLUGINS)
    for p in rep.plugins:
        assert p["installed"] == plug.installed(p["provider"])
        if p["installed"] and not p["error"]:
            assert p["devices"] == [plug.describe(d) for d in plug.devices(p["provider"])]
    assert rep.providers == ort.get_available_providers()


def test_info_names_the_compiled_graphs_and_the_htp_share():
    from click.testing import CliRunner

    from ranet_edge.cli import get_cli

    r = CliRunner().invoke(get_cli(), ["info", str(QNN_BUNDLE)])
    assert r.exit_code == 0, r.output
    assert "int8-qdq onnx, batch 1" in r.output
    assert "compiled for QNNExecutionProvider (EPContext models, loaded by that provider): 6 of 6 graphs" in r.output
    assert "QNN HTP: stage4.onnx 387/387 nodes (100%), on the CPU: nothing" in r.output
    rep = json.loads(CliRunner().invoke(get_cli(), ["info", str(DEFAULT_BUNDLE), "--json"]).stdout)
    assert rep["compiled"] == {} and rep["qnn_placement"] is None

"""`ranet-edge doctor`: real builds, providers, sessions and CPU flags of this machine, and
what it says when onnxruntime is missing or doubled. Torch-free (runs in the lean install)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from ranet_edge import doctor
from ranet_edge.assets import DEFAULT_BUNDLE
from ranet_edge.doctor import check_provider, diagnose, parse_cpuinfo
from ranet_edge.runtime._capture_output import captured_output

ROOT = Path(__file__).resolve().parents[1]
needs_bundle = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no shipped bundle")


def _doctor_json(*args, env=None, block_ort=False) -> tuple[int, dict]:
    code = ("import sys\n" + ("sys.modules['onnxruntime'] = None\n" if block_ort else "")
            + "from ranet_edge.cli import main\nmain(['doctor', '--json', *sys.argv[1:]])")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env={**os.environ, **(env or {})})
    return r.returncode, json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def test_report_matches_this_machine():
    rep = diagnose()
    assert rep.onnxruntime == ort.__version__ and rep.providers == ort.get_available_providers()
    assert {"name": "onnxruntime", "version": importlib.metadata.version("onnxruntime"), "extra": "cpu"} \
        in rep.onnxruntime_builds
    assert Path(rep.onnxruntime_path) == Path(ort.__file__).parent
    torch_here = importlib.util.find_spec("torch") is not None
    assert (rep.torch is not None) == torch_here and "torch" not in sys.modules or torch_here
    if Path("/proc/cpuinfo").exists():
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.lower().startswith(("flags", "features"))), [])
        assert set(rep.cpu_features) <= set(flags) | {"neon", "fp16", "dotprod"}
        assert ("avx2" in rep.cpu_features) == ("avx2" in flags)
    assert [c.provider for c in rep.accelerators] == [p for p in rep.providers if p not in
                                                      ("CPUExecutionProvider", "AzureExecutionProvider")]
    json.dumps(rep.to_dict(), allow_nan=False)


def test_parse_cpuinfo_arm64():
    text = ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
            "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm bf16\nCPU implementer\t: 0x41\n")
    _, features = parse_cpuinfo(text)
    assert features == ["neon", "fp16", "dotprod", "i8mm", "bf16"]
    name, features = parse_cpuinfo("model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert name == "AMD EPYC 7B13" and features == ["sse4_2", "avx", "avx2", "fma"]


def test_native_output_is_captured():
    with captured_output() as out:
        os.write(2, b"2026-01-01 00:00:00.000 [E:onnxruntime:Default] Failed to load library libcudnn.so.9\n")
        os.write(1, b"to stdout\n")
    assert "libcudnn.so.9" in out[0] and "to stdout" in out[0]
    assert doctor.captured_output is captured_output  # the runtime's, which doctor names too


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_a_provider_that_gets_no_session_says_why():
    check = check_provider(ort, "CUDAExecutionProvider")
    assert not check.usable
    assert "CUDAExecutionProvider" in check.reason and "not in available provider names" in check.reason


@needs_bundle
def test_doctor_json_with_the_shipped_bundle():
    code, rep = _doctor_json(DEFAULT_BUNDLE)
    assert code == 0 and rep["ok"] and rep["problems"] == []
    graphs = rep["bundle"]["graphs"]
    assert [g["graph"] for g in graphs] == [f"stage{k}.onnx" for k in range(6)]
    assert all(g["providers"][0] == "CPUExecutionProvider" and g["all_nodes_on_first"] for g in graphs)


@needs_bundle
def test_doctor_reports_a_tampered_bundle(tmp_path):
    copy = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "b"))
    data = bytearray((copy / "stage1.onnx").read_bytes())
    data[-5] ^= 1
    (copy / "stage1.onnx").write_bytes(bytes(data))
    code, rep = _doctor_json(copy)
    assert code == 0 and not rep["ok"] and "sha256" in rep["bundle"]["error"]


def test_doctor_without_onnxruntime_still_reports():
    code, rep = _doctor_json(block_ort=True)
    assert code == 0 and rep["onnxruntime"] is None and rep["providers"] == []
    assert any("cannot be imported" in p and "ranet-edge[cpu]" in p for p in rep["problems"])


def test_doctor_flags_two_builds(tmp_path):
    info = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    code, rep = _doctor_json(env={"PYTHONPATH": str(tmp_path), "PYTHONWARNINGS": "ignore"})
    assert code == 0 and [b["name"] for b in rep["onnxruntime_builds"]] == ["onnxruntime", "onnxruntime-gpu"]
    assert any("pip uninstall -y onnxruntime onnxruntime-gpu" in p for p in rep["problems"])


def test_doctor_text(run):
    result = run("doctor")
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "CPUExecutionProvider" in result.output

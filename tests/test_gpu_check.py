"""The prepared GPU check's CPU dry run, as CI runs it (`check.sh --provider cpu --quick`):
it exits 0 and its JSON report has every section, filled from real runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # the check converts bundles (export extra): skipped in the lean install

from ranet_edge.assets import DEFAULT_BUNDLE
from ranet_edge.export.convert import convert_bundle

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "providers", "bundles", "logits_vs_cpu", "fp16_accuracy", "stages", "chain_vs_monolithic",
            "device_vs_host", "adaptive", "routed_throughput", "shapes", "load_warmup", "cudnn_search",
            "tensorrt", "capture", "imagenet", "checks")


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    bundles = tmp_path / "bundles"  # default-fp16 only: c1 and c1-fp16 must be reported missing
    convert_bundle(DEFAULT_BUNDLE, bundles / "default-fp16", "fp16", log=lambda m: None)
    out = tmp_path / "report.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "check.sh"), "--provider", "cpu",
                           "--python", sys.executable, "--quick", "--no-prepare", "--budget-s", "900",
                           "--bundles", str(bundles), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checks" in proc.stdout and "logits vs CPU" in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    for name in SECTIONS:
        assert report.get(name), name
        assert "error" not in report[name], (name, report[name])
    assert report["passed"] and all(c["ok"] for c in report["checks"])
    assert set(report["bundles"]["found"]) == {"default", "default-fp16"}
    assert set(report["bundles"]["missing"]) == {"c1", "c1-fp16", "imagenet-ranet", "imagenet-msdnet"}
    assert "prepare_bundles.py" in report["bundles"]["missing"]["c1"]
    assert report["env"]["provider_requested"] == "CPUExecutionProvider"
    batch, top = report["settings"]["batch"], report["settings"]["max_batch"]
    for name in ("default", "default-fp16"):
        assert len(report["logits_vs_cpu"][name]["exits"]) == 6 and report["logits_vs_cpu"][name]["ok"]
        assert len(report["stages"][name][f"batch{batch}_p50_ms"]) == 6
        assert report["chain_vs_monolithic"][name][f"batch{batch}"]["ratio"] > 0
        assert report["device_vs_host"][name][f"predict_batch{batch}"]["host_over_device"] > 0
        for b in (1, batch, top):
            row = report["adaptive"][name][f"batch{b}"]
            assert row["predicted_speedup"] > 1 and row["measured_speedup"] > 0
            assert sum(row["exit_counts"]) > 0
    fp16 = report["fp16_accuracy"]["default"]["exits"]
    assert len(fp16) == 6 and all(abs(e["top1_fp32"] - e["top1_fp16"]) <= 0.02 for e in fp16)
    assert report["routed_throughput"]["bucketed_vs_unbucketed"]["identical"]  # exact on the CPU
    shapes = report["shapes"]
    assert shapes["bounded"] and max(shapes["bucketed"]["distinct_per_graph"]) <= shapes["bound_per_graph"]
    assert report["load_warmup"]["default"]["buckets"]["warm_sizes"][-1] == top
    assert "CUDA" in report["cudnn_search"]["skipped"]
    assert report["tensorrt"]["usable"] is False and report["tensorrt"]["reason"]
    cap = report["capture"]["default"]  # fixed-address plans, uncaptured on the CPU
    graphs = cap["capture_report"]["graphs"]
    assert len(graphs) == 6 + 1 + 5 and not any(g["captured"] for g in graphs)
    for b in (1, batch):
        assert cap[f"batch{b}"]["chain_captured_ms"] > 0 and cap[f"batch{b}"]["mono_captured_ms"] > 0
    for b in (1, batch, top):
        assert cap["adaptive"][f"batch{b}"]["predicted_speedup"] > 1
    assert cap["routed"]["steady"][f"batch{batch}_agreement"]["exits_equal"] == 1.0
    assert report["imagenet"]["imagenet-ranet"]["skipped"].startswith("bundle missing")


def test_gpu_check_sections_selects_and_refuses(tmp_path):
    """--sections runs only what it names (a second short GPU run after a cut one); a wrong
    name is one usage line, exit 2."""
    check = [sys.executable, str(REPO / "benchmarks" / "gpu" / "check.py"), "--provider", "cpu", "--quick",
             "--no-prepare", "--bundles", str(tmp_path / "none")]
    bad = subprocess.run([*check, "--sections", "adaptive,warp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--sections takes a comma list of" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "report.json"
    proc = subprocess.run([*check, "--sections", "logits_vs_cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["logits_vs_cpu"]["default"]["ok"]
    for name in ("stages", "adaptive", "routed_throughput", "shapes", "load_warmup", "cudnn_search", "tensorrt",
                 "capture", "imagenet"):
        assert report[name] == {"skipped": "not selected (--sections)"}, name


def _gpu_module(name):
    import importlib

    sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_wheel_parts_split_and_join(tmp_path):
    parts = _gpu_module("wheel_parts")
    wheel = tmp_path / "onnxruntime_gpu-0-cp312-cp312-x.whl"
    wheel.write_bytes(bytes(range(256)) * 5000)
    made = parts.split(wheel, tmp_path / "w", mib=0.5)
    assert len(made) == 3 and not (tmp_path / "w" / wheel.name).exists()
    assert parts.join(tmp_path / "w").read_bytes() == wheel.read_bytes()
    (tmp_path / "w" / wheel.name).unlink()
    made[1].write_bytes(made[1].read_bytes()[:-1] + b"x")  # a damaged part is refused
    with pytest.raises(SystemExit, match="damaged"):
        parts.join(tmp_path / "w")
    made[2].unlink()
    with pytest.raises(SystemExit, match="1 of 3 parts missing"):
        parts.join(tmp_path / "w")


def test_seeded_skeleton_round_trip(tmp_path):
    """A bundle stripped to a seeded skeleton is small, comes back byte for byte from numpy,
    verifies, runs, and takes fixed-share thresholds."""
    import shutil

    import numpy as np

    from ranet_edge.runtime import ExitChain

    seeded = _gpu_module("seeded")
    bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    before = sum(p.stat().st_size for p in bundle.glob("*.onnx"))
    record = seeded.strip(bundle)
    seeded.drop_weights(bundle)
    after = sum(p.stat().st_size for p in bundle.glob("*.onnx"))
    assert after < before / 5 and seeded.is_seeded(bundle)
    assert all(r["tensors"] for r in record["graphs"].values())
    seeded.materialise(bundle, log=lambda m: None)
    chain = ExitChain.load(bundle, warmup=False)  # the manifest's sha256 are the skeletons'
    out = seeded.set_thresholds(bundle, log=lambda m: None)
    assert sum(out["exit_counts"]) == seeded.N_IMAGES and max(out["exit_counts"]) < seeded.N_IMAGES
    chain = ExitChain.load(bundle, warmup=False)
    assert chain.default_operating_point == "fixed-share"
    res = chain.predict(seeded.images(seeded.N_IMAGES, chain.input_shape))
    assert np.bincount(res.exits, minlength=chain.num_exits).tolist() == out["exit_counts"]
    weights = next(bundle.glob("*.weights"))
    weights.unlink()  # a missing file is written again, and checked
    seeded.materialise(bundle, log=lambda m: None)
    assert weights.is_file()
    import json

    rec = json.loads((bundle / seeded.SEED_FILE).read_text())
    rec["graphs"][next(iter(rec["graphs"]))]["sha256"] = "0" * 64  # another numpy's numbers: refused
    (bundle / seeded.SEED_FILE).write_text(json.dumps(rec))
    for p in bundle.glob("*.weights"):
        p.unlink()
    with pytest.raises(ValueError, match="not the recorded"):
        seeded.materialise(bundle, log=lambda m: None)

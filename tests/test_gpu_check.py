"""The prepared GPU check's CPU dry run (`check.sh --provider cpu --quick`, what `make check`
runs): it exits 0 with every check it runs passing, and a check that cannot apply on the CPU
is reported as skipped with its reason, never as passed. Real sessions, real bundles."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ranet_edge.assets import DEFAULT_BUNDLE

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"
SECTIONS = ("env", "providers", "bundles", "logits_vs_cpu", "fp16_accuracy", "stages", "chain_vs_monolithic",
            "device_vs_host", "adaptive", "routed_throughput", "shapes", "load_warmup", "cudnn_search",
            "tensorrt", "capture", "imagenet", "checks")
#: The sections the old dry run failed (they ran every bundle found, the ImageNet ones included,
#: on CIFAR images), and the captured executor's.
FAILED_BEFORE = ("logits_vs_cpu", "stages", "chain_vs_monolithic", "device_vs_host")


def _gpu_module(name):
    import importlib

    sys.path.insert(0, str(GPU))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _assert_honest(report: dict) -> dict[str, dict]:
    """Every check passed or was skipped with a reason; the checks by name."""
    checks = {c["name"]: c for c in report["checks"]}
    assert len(checks) == len(report["checks"])  # names are unique
    for c in report["checks"]:
        assert c["ok"] is True or (c["ok"] is None and c["skipped"]), c
    assert report["passed"] is True
    return checks


def _imagenet_stand_in(bundles: Path) -> None:
    """``bundles/imagenet-ranet``: the shipped bundle stripped to a seeded skeleton, its weights
    dropped (as prepare_bundles.py leaves the real one, whose export takes minutes): the
    ``imagenet`` section's code path on CIFAR-size graphs. Needs the export extra (onnx)."""
    import shutil

    pytest.importorskip("onnx")
    seeded = _gpu_module("seeded")
    shutil.copytree(DEFAULT_BUNDLE, bundles / "imagenet-ranet")
    seeded.strip(bundles / "imagenet-ranet")
    seeded.drop_weights(bundles / "imagenet-ranet")  # the check regenerates them, as on a GPU host


def test_dry_run_sections_pass_and_skip_honestly(tmp_path):
    """The sections the old dry run failed, and the captured executor's, on the shipped bundle
    with a seeded ImageNet bundle beside it (which the CIFAR sections ran, and failed on): they
    run, their checks pass, and what needs a GPU says it was skipped and why."""
    _imagenet_stand_in(tmp_path / "bundles")
    check = [sys.executable, str(GPU / "check.py"), "--provider", "cpu", "--quick", "--no-prepare",
             "--bundles", str(tmp_path / "bundles")]
    bad = subprocess.run([*check, "--sections", "adaptive,warp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--sections takes a comma list of" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "report.json"
    proc = subprocess.run([*check, "--sections", ",".join([*FAILED_BEFORE, "capture", "imagenet"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for name in (*FAILED_BEFORE, "capture", "imagenet"):
        assert "error" not in report[name] and "skipped" not in report[name], (name, report[name])
    for name in ("fp16_accuracy", "adaptive", "routed_throughput", "shapes", "load_warmup", "tensorrt"):
        assert report[name] == {"skipped": "not selected (--sections)"}, name
    checks = _assert_honest(report)
    for name in FAILED_BEFORE:  # the CIFAR sections leave the ImageNet bundle to its own section
        assert set(report[name]) == {"default"}, name
    assert checks["logits default"]["ok"] and checks["provider in use"]["ok"]
    assert checks["device executor in use"]["ok"] and report["logits_vs_cpu"]["default"]["executor"] == "device"
    assert len(report["stages"]["default"]["batch1_p50_ms"]) == 6
    assert report["chain_vs_monolithic"]["default"]["batch1"]["ratio"] > 0
    assert report["device_vs_host"]["default"]["predict_batch8"]["host_over_device"] > 0
    cap = report["capture"]["default"]
    assert cap["capture_report"]["executor"] == "captured"
    assert len(cap["capture_report"]["graphs"]) == 6 + 5 and not cap["capture_report"]["requested"]
    assert checks["capture report default"]["ok"]
    assert cap["run_all_vs_plain"]["max_relative"] == 0.0 and checks["captured run_all = plain default"]["ok"]
    assert checks["captured predict = plain default batch8"]["ok"]
    assert checks["CUDA graphs default"]["ok"] is None and "CPU" in checks["CUDA graphs default"]["skipped"]
    assert report["imagenet"]["imagenet-ranet"]["capture_report"]["executor"] == "captured"
    assert checks["capture report imagenet-ranet"]["ok"] is True
    assert checks["imagenet imagenet-msdnet"]["skipped"].startswith("bundle missing")
    assert checks["section cudnn_search"]["ok"] is None  # not selected: a skip, not a pass
    assert "skip CUDA graphs default:" in proc.stdout and "FAIL" not in proc.stdout


def test_checks_fail_what_the_gpu_must_do():
    """The GPU side of the capture checks, on reports a GPU run could write: a session neither
    captured nor naming a blocker fails, an uncaptured session fails "CUDA graphs", and on the
    CPU a report that claims a capture fails."""
    check = _gpu_module("check")

    def report(graphs, requested, routed_exits=1.0):
        rep = {"executor": "captured", "requested": requested, "blockers": [], "graphs": graphs}
        row = {"capture_report": rep, "run_all_vs_plain": {"batch": 64, "max_relative": 1e-4, "tolerance": 5e-3},
               "routed": {"steady": {"batch64_agreement": {"exits_equal": routed_exits, "labels_equal": 1.0}}}}
        return {"capture": {"default": row}, "tensorrt": {"usable": False, "reason": "no libnvinfer"}}

    stage = [{"name": f"stage{i}.onnx", "captured": True, "blockers": []} for i in range(3)]
    gathers = [{"name": f"gather after stage{i}.onnx", "captured": True, "blockers": []} for i in range(2)]
    cuda = "CUDAExecutionProvider"
    checks = {c["name"]: c for c in check._checks(report(stage + gathers, True), cuda)}
    assert all(c["ok"] for n, c in checks.items() if n != "TensorRT engine cache reused")
    assert checks["TensorRT engine cache reused"]["ok"] is None
    silent = [{**gathers[0], "captured": False}, gathers[1]]  # uncaptured, no reason given
    checks = {c["name"]: c for c in check._checks(report(stage + silent, True, routed_exits=0.98), cuda)}
    assert checks["capture report default"]["ok"] is False and checks["CUDA graphs default"]["ok"] is False
    assert checks["captured predict = plain default batch64"]["ok"] is False
    named = [{**gathers[0], "captured": False, "blockers": ["onnxruntime refused CUDA graphs: ..."]}, gathers[1]]
    checks = {c["name"]: c for c in check._checks(report(stage + named, True), cuda)}
    assert checks["capture report default"]["ok"] and checks["CUDA graphs default"]["ok"] is False
    cpu = "CPUExecutionProvider"
    checks = {c["name"]: c for c in check._checks(report(stage + gathers, True), cpu)}
    assert checks["capture report default"]["ok"] is False  # the CPU cannot have captured anything
    assert checks["captured run_all = plain default"]["ok"]  # judged by the tolerance the row records
    assert checks["CUDA graphs default"]["ok"] is None


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    """The whole quick dry run through check.sh, with an fp16 bundle and the ImageNet stand-in:
    every section runs, every check passes or says why it was skipped."""
    bundles = tmp_path / "bundles"  # no c1 / c1-fp16 / imagenet-msdnet: reported missing
    _imagenet_stand_in(bundles)
    from ranet_edge.export.convert import convert_bundle

    convert_bundle(DEFAULT_BUNDLE, bundles / "default-fp16", "fp16", log=lambda m: None)
    out = tmp_path / "report.json"
    proc = subprocess.run(["bash", str(GPU / "check.sh"), "--provider", "cpu", "--python", sys.executable, "--quick",
                           "--no-prepare", "--budget-s", "900", "--bundles", str(bundles), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checks" in proc.stdout and "logits vs CPU" in proc.stdout and "FAIL" not in proc.stdout
    report = json.loads(out.read_text())
    for name in SECTIONS:
        assert report.get(name), name
        assert "error" not in report[name], (name, report[name])
    checks = _assert_honest(report)
    assert set(report["bundles"]["found"]) == {"default", "default-fp16", "imagenet-ranet"}
    assert set(report["bundles"]["missing"]) == {"c1", "c1-fp16", "imagenet-msdnet"}
    assert "prepare_bundles.py" in report["bundles"]["missing"]["c1"]
    assert report["env"]["provider_requested"] == "CPUExecutionProvider"
    batch, top = report["settings"]["batch"], report["settings"]["max_batch"]
    for name in ("default", "default-fp16"):  # the CIFAR bundles only; the ImageNet one has its own section
        assert len(report["logits_vs_cpu"][name]["exits"]) == 6 and report["logits_vs_cpu"][name]["ok"]
        assert len(report["stages"][name][f"batch{batch}_p50_ms"]) == 6
        assert report["chain_vs_monolithic"][name][f"batch{batch}"]["ratio"] > 0
        assert report["device_vs_host"][name][f"predict_batch{batch}"]["host_over_device"] > 0
        for b in (1, batch, top):
            row = report["adaptive"][name][f"batch{b}"]
            assert row["predicted_speedup"] > 1 and row["measured_speedup"] > 0
            assert sum(row["exit_counts"]) > 0
    assert set(report["logits_vs_cpu"]) == {"default", "default-fp16"}
    fp16 = report["fp16_accuracy"]["default"]["exits"]
    assert len(fp16) == 6 and all(abs(e["top1_fp32"] - e["top1_fp16"]) <= 0.02 for e in fp16)
    assert report["routed_throughput"]["bucketed_vs_unbucketed"]["identical"]  # exact on the CPU
    shapes = report["shapes"]
    assert shapes["bounded"] and max(shapes["bucketed"]["distinct_per_graph"]) <= shapes["bound_per_graph"]
    assert report["load_warmup"]["default"]["buckets"]["warm_sizes"][-1] == top
    assert "CUDA" in report["cudnn_search"]["skipped"] and checks["section cudnn_search"]["ok"] is None
    assert report["tensorrt"]["usable"] is False and checks["TensorRT engine cache reused"]["ok"] is None
    cap = report["capture"]["default"]  # the captured executor, uncaptured on the CPU
    graphs = cap["capture_report"]["graphs"]
    assert len(graphs) == 6 + 5 and not any(g["captured"] for g in graphs)
    for b in (1, batch):
        assert cap[f"batch{b}"]["chain_captured_ms"] > 0 and cap[f"batch{b}"]["mono_captured_ms"] > 0
    for b in (1, batch, top):
        assert cap["adaptive"][f"batch{b}"]["predicted_speedup"] > 1
    assert cap["routed"]["steady"][f"batch{batch}_agreement"]["exits_equal"] == 1.0
    for name in ("buckets keep results", "shapes bounded", "fp16 top-1", "capture report default",
                 f"captured predict = plain default batch{top}", "capture report imagenet-ranet"):
        assert checks[name]["ok"] is True, name
    stand_in = report["imagenet"]["imagenet-ranet"]
    assert stand_in["capture_report"]["executor"] == "captured" and stand_in["adaptive"]["batch1"]["exit_counts"]
    assert report["imagenet"]["imagenet-msdnet"]["skipped"].startswith("bundle missing")
    assert checks["imagenet imagenet-msdnet"]["ok"] is None


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
    pytest.importorskip("onnx")  # stripping reads and writes ONNX (export extra)
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
    rec = json.loads((bundle / seeded.SEED_FILE).read_text())
    rec["graphs"][next(iter(rec["graphs"]))]["sha256"] = "0" * 64  # another numpy's numbers: refused
    (bundle / seeded.SEED_FILE).write_text(json.dumps(rec))
    for p in bundle.glob("*.weights"):
        p.unlink()
    with pytest.raises(ValueError, match="not the recorded"):
        seeded.materialise(bundle, log=lambda m: None)

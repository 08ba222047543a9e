"""The official-configuration sweep through the CLI (test_config_sweep.py has the library
sweep): `inspect`, `export` and `info` without flags in process for three configurations,
and `export` and `info` in a real process for one ImageNet MSDNet with dead work."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sweep_support import MSDNET, RANET, check_bundle, make_checkpoint

CLI_CASES = [MSDNET[0], MSDNET[28], RANET[1]]  # dead work on CIFAR and ImageNet; a RANet
QUICK = MSDNET[0]  # the one `make test` runs (about a second); the others are slow


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[] if c is QUICK else [pytest.mark.slow])
                                  for c in CLI_CASES])
def test_cli_inspect_export_info(case, tmp_path, run):
    """The CLI, in process: inspect and export without flags, then info."""
    ckpt = tmp_path / "model_best.pth.tar"
    model = make_checkpoint(case, ckpt)
    official = model.exit_costs()
    res = run("inspect", ckpt, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["flops"] == [c.flops for c in official]
    assert report["dead_flops"] == [c.dead_flops for c in official]
    res = run("inspect", ckpt)
    assert res.exit_code == 0, res.output
    dead = official[-1].dead_flops
    notes = [line for line in res.output.splitlines() if line.startswith("dead work:")]
    assert len(notes) == (1 if dead else 0)
    out = tmp_path / "bundle"
    res = run("export", ckpt, "-o", out)
    assert res.exit_code == 0, res.output
    check_bundle(model, out)
    res = run("info", out)
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("dead work:")]
    assert len(notes) == (1 if dead else 0)
    if dead:
        assert f"{dead / 1e6:.2f} of the {official[-1].flops / 1e6:.2f} official MFLOPs" in notes[0]


@pytest.mark.slow
def test_cli_subprocess_exports_dead_work(tmp_path):
    """The installed entry point, one real process each for export and info."""
    case = MSDNET[26]  # ImageNet, four scales, one block: three of its four scales are dead work
    ckpt = tmp_path / "model_best.pth.tar"
    model = make_checkpoint(case, ckpt)
    assert model.exit_costs()[-1].dead_flops > 0
    exe = [sys.executable, "-m", "ranet_edge.cli"]
    out = tmp_path / "bundle"
    res = subprocess.run([*exe, "export", str(ckpt), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    check_bundle(model, out)
    res = subprocess.run([*exe, "info", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sum(line.startswith("dead work:") for line in res.stdout.splitlines()) == 1

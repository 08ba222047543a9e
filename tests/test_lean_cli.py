"""The runtime commands on the shipped bundle with nothing but the ``cpu`` extra, and the
commands that need another extra saying which, in one line. Runs in the lean install
(``make test-lean``: only ``.[cpu]`` and pytest) and in the full one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(),
                                reason="this checkout ships no default bundle")
ROOT = Path(__file__).resolve().parents[1]
# What the lean install lacks; blocking them makes the full install behave the same.
EXTRA_MODULES = ("torch", "onnx", "onnxsim", "matplotlib")


def cli_without_extras(*args) -> subprocess.CompletedProcess:
    """``ranet-edge ARGS`` in a fresh interpreter in which torch, onnx, onnxsim and matplotlib
    cannot be imported."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRA_MODULES)
            + "from ranet_edge.cli import main\nmain(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("pngs")
    with np.load(SAMPLE_IMAGES) as z:
        x = z["x"][:4]
    paths = []
    for i, rgb in enumerate(x):
        paths.append(root / f"{i}.png")
        assert cv2.imwrite(str(paths[-1]), np.ascontiguousarray(rgb[..., ::-1]))
    return paths


def test_predict_info_providers_without_extras(pngs):
    r = cli_without_extras("predict", DEFAULT_BUNDLE, *pngs, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    chain = ExitChain.load(DEFAULT_BUNDLE)
    want = chain.predict(chain.preprocess([cv2.imread(str(p))[..., ::-1] for p in pngs]))
    assert [row["label"] for row in rows] == want.labels.tolist()
    assert [row["exit"] for row in rows] == want.exits.tolist()
    assert rows[0]["class"] in chain.class_names
    r = cli_without_extras("info", DEFAULT_BUNDLE, "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["exits"]) == 6, r.stderr
    r = cli_without_extras("providers", "--json")
    assert r.returncode == 0 and "CPUExecutionProvider" in r.stdout, r.stderr


@pytest.mark.slow
def test_bench_eval_calibrate_without_extras(tmp_path):
    r = cli_without_extras("bench", "--iters", "3", "--warmup", "1", "--images", "10", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b.json").read_text())["monolithic_ms"] > 0
    r = cli_without_extras("eval", "--val-size", "250", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "e.json").read_text())["budgeted"]) == 39
    bundle = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))
    r = cli_without_extras("calibrate", bundle, "--p", "1.0", "--name", "lean", "--json")
    assert r.returncode == 0, r.stderr
    assert "lean" in json.loads((bundle / "thresholds.json").read_text())["points"]


@pytest.mark.parametrize("args, extra", [
    (["convert", "{bundle}", "-o", "{tmp}/out", "--to", "fp16"], "export"),
    (["export", "-o", "{tmp}/out"], "export"),
    (["train", "--data", "{tmp}"], "train"),
    (["eval", "--plot", "{tmp}/e.png"], "plot"),
])
def test_commands_needing_an_extra_say_which_in_one_line(tmp_path, args, extra):
    r = cli_without_extras(*[a.format(bundle=DEFAULT_BUNDLE, tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert f"pip install 'ranet-edge[{extra}]'" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_without_extras_starts_from_the_shipped_bundle(tmp_path):
    """``pip install 'ranet-edge[cpu]'`` then ``ranet-edge demo``: no export, the rest runs."""
    r = cli_without_extras("demo", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    assert "export: skipped, torch and onnx are not installed (pip install 'ranet-edge[export]')" in r.stdout
    assert "early exit at work" in r.stdout and (tmp_path / "demo" / "bench.json").exists()
    points = json.loads((tmp_path / "demo" / "bundle" / "thresholds.json").read_text())
    assert points["default"] == "demo" and "iso-accuracy" in points["points"]
    shipped = json.loads((DEFAULT_BUNDLE / "thresholds.json").read_text())
    assert "demo" not in shipped["points"]  # the shipped bundle itself is untouched

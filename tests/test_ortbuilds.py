"""onnxruntime builds as extras: none in the base requirements, one line when none is
installed, a warning naming the repair when several are."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_ORT = "import sys; sys.modules['onnxruntime'] = None\n"  # `import onnxruntime` raises ImportError


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_base_requirements_hold_no_build_and_each_extra_one():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    base = cfg["options"]["install_requires"]
    assert "onnxruntime" not in base
    extras = {k: [line.split(">")[0].split("=")[0].strip() for line in v.strip().splitlines()]
              for k, v in cfg["options.extras_require"].items()}
    assert extras["cpu"] == ["onnxruntime"] and extras["gpu"] == ["onnxruntime-gpu"]
    assert extras["openvino"] == ["onnxruntime-openvino"] and extras["directml"] == ["onnxruntime-directml"]
    # plugin execution providers install beside the CPU build: any extra may bring them
    plugins = {"onnxruntime-qnn", "onnxruntime-ep-openvino", "onnxruntime-ep-webgpu"}
    assert extras["qnn"] == ["onnxruntime-qnn"] and extras["openvino-plugin"] == ["onnxruntime-ep-openvino"]
    for name, reqs in extras.items():
        if name not in ("cpu", "gpu", "openvino", "directml"):
            assert not [r for r in reqs if r.startswith("onnxruntime") and r not in plugins], name
    pins = (ROOT / "constraints.txt").read_text().split()
    for build in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", *plugins):
        assert any(p.startswith(f"{build}==") for p in pins), build
    assert "'.[all,test,cpu]'" in (ROOT / "Makefile").read_text()


def test_no_build_installed_is_one_line_naming_the_extras():
    for use in ("from ranet_edge.runtime import ExitChain", "import ranet_edge.runtime.chain",
                "import ranet_edge.runtime as rt; rt.load_manifest"):
        r = _python(NO_ORT + use)
        assert r.returncode != 0, use
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("ranet_edge.errors.MissingExtraError: no onnxruntime build is installed"), (use, last)
        assert all(f"[{e}]" in last for e in ("cpu", "gpu", "openvino", "directml"))
    # an ImportError too, for code that guards an optional import
    r = _python(NO_ORT + "try:\n    from ranet_edge.runtime import ExitChain\nexcept ImportError as exc:\n"
                         "    print(type(exc).__name__)")
    assert r.stdout.strip() == "MissingExtraError", r.stderr


def test_build_detection_lives_in_the_runtime_and_imports_without_a_build():
    """``ranet_edge.runtime.ortbuilds`` is what doctor reads where onnxruntime cannot be imported."""
    r = _python(NO_ORT + "from ranet_edge.runtime.ortbuilds import installed_builds; "
                         "print([b.name for b in installed_builds()])")
    assert r.returncode == 0 and "onnxruntime" in r.stdout, r.stderr
    assert not (ROOT / "ranet_edge" / "ortbuilds.py").exists()


def test_cli_without_a_build_says_one_line(tmp_path):
    """A command that runs graphs says one line; ``info``, which only reads the manifest, works."""
    import cv2
    import numpy as np

    from ranet_edge.assets import DEFAULT_BUNDLE

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    info = _python(NO_ORT + f"from ranet_edge.cli import main; main(['info', {str(DEFAULT_BUNDLE)!r}])")
    assert info.returncode == 0 and "stage0.onnx" in info.stdout, info.stderr
    r = _python(NO_ORT + f"from ranet_edge.cli import main; main(['predict', {str(DEFAULT_BUNDLE)!r}, {str(image)!r}])")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: no onnxruntime build is installed"), r.stderr
    assert "pip install 'ranet-edge[cpu]'" in r.stderr


def test_two_builds_installed_warn_with_the_repair(tmp_path):
    """A second distribution recorded the way pip records one (a dist-info with METADATA)."""
    info = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    code = ("import warnings\nwarnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n    import ranet_edge.runtime\n"
            # the runtime imports lazily (issue 17): the build check warns at first use
            "    ranet_edge.runtime.ExitChain\n"
            "print('\\n'.join(f'{w.category.__name__}: {w.message}' for w in seen))")
    r = _python(code, {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    import onnxruntime

    line = [w for w in r.stdout.splitlines() if w.startswith("SeveralBuildsWarning")]
    assert len(line) == 1, r.stdout
    assert f"onnxruntime {onnxruntime.__version__}, onnxruntime-gpu 1.31.1" in line[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line[0] and "'ranet-edge[cpu]'" in line[0]
    r = _python(code)  # and nothing without the second one
    assert "SeveralBuildsWarning" not in r.stdout


def test_plugin_qnn_is_no_second_build(tmp_path, monkeypatch):
    """onnxruntime-qnn 2.x is a plugin (its own onnxruntime_qnn/ package beside the CPU
    build); 1.x was a build of its own that replaced onnxruntime/."""
    from ranet_edge.runtime.ortbuilds import installed_builds

    (tmp_path / "onnxruntime_qnn-2.7.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "onnxruntime-qnn" not in [b.name for b in installed_builds()]
    (tmp_path / "onnxruntime_qnn-1.22.0.dist-info").mkdir()
    assert [(b.name, b.version) for b in installed_builds() if b.name == "onnxruntime-qnn"] == [("onnxruntime-qnn", "1.22.0")]

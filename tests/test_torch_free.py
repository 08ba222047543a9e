"""The runtime and the data readers must import without torch."""
from __future__ import annotations

import subprocess
import sys


def test_runtime_and_data_do_not_import_torch():
    code = 'import sys, ranet_edge.runtime, ranet_edge.data; print("torch" in sys.modules)'
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_runtime_import_is_lazy():
    """import ranet_edge.runtime loads nothing heavy; ExitChain brings numpy and onnxruntime
    but opencv only comes when an image file is decoded."""
    code = (
        "import sys\n"
        "import ranet_edge.runtime as rt\n"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'cv2', 'torch') if m in sys.modules))\n"
        "from ranet_edge.runtime import ExitChain, read_image\n"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'cv2', 'torch') if m in sys.modules))\n"
        "print(sorted(rt.__all__) == sorted(n for n in rt.__all__ if getattr(rt, n) is not None))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["[]", "['numpy', 'onnxruntime']", "True"]


def test_evaluation_import_is_lazy_and_every_name_resolves():
    """ranet_edge.runtime.evaluation (what predict does not need) loads nothing until a name is
    used; each name of its __all__ is its module's own object, and its modules still import as
    submodules."""
    code = (
        "import importlib, sys\n"
        "import ranet_edge.runtime.evaluation as ev\n"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'torch') if m in sys.modules))\n"
        "print(sorted(ev.__all__) == sorted(ev._WHERE) == sorted(set(dir(ev)) & set(ev._WHERE)))\n"
        "print(all(getattr(ev, n) is getattr(importlib.import_module(ev._WHERE[n], ev.__name__), n)"
        " for n in ev.__all__))\n"
        "from ranet_edge.runtime.evaluation import calibration, timing\n"
        "print(calibration.__name__, timing.__name__, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == [
        "[]", "True", "True",
        "ranet_edge.runtime.evaluation.calibration ranet_edge.runtime.evaluation.timing False"]

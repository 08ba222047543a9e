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

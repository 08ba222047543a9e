"""The runtime and the data readers must import without torch."""
from __future__ import annotations

import subprocess
import sys


def test_runtime_and_data_do_not_import_torch():
    code = 'import sys, ranet_edge.runtime, ranet_edge.data; print("torch" in sys.modules)'
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

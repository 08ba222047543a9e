"""The quick loop's guard (tests/quick_loop.py) in a pytest run of its own: a module whose
tests are all marked slow fails `pytest -m "not slow"` before any test runs, naming the
module; one fast test left unmarked, the run passes; the whole run is never stopped."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FAST_AND_SLOW = '''import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    pass
'''

ALL_SLOW = '''import pytest

pytestmark = pytest.mark.slow

def test_slow():
    pass
'''


def pytest_in(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # none of the installed plugins: quicker
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "quick_loop",
                           "--rootdir", str(root), "-o", "markers=slow: slow", *args, str(root)],
                          capture_output=True, text=True, env=env, cwd=root, timeout=120)


def test_a_module_with_only_slow_tests_fails_the_quick_loop(tmp_path):
    (tmp_path / "test_mixed.py").write_text(FAST_AND_SLOW)
    (tmp_path / "test_all_slow.py").write_text(ALL_SLOW)
    quick = pytest_in(tmp_path, "-m", "not slow")
    assert quick.returncode == 4, quick.stdout + quick.stderr
    assert "test_all_slow.py: every test is marked slow" in quick.stdout + quick.stderr
    assert "test_mixed.py" not in quick.stdout + quick.stderr
    assert "1 passed" not in quick.stdout  # stopped before any test ran
    whole = pytest_in(tmp_path)
    assert whole.returncode == 0 and "3 passed" in whole.stdout, whole.stdout + whole.stderr

    (tmp_path / "test_all_slow.py").write_text(FAST_AND_SLOW)
    quick = pytest_in(tmp_path, "-m", "not slow")
    assert quick.returncode == 0 and "2 passed, 2 deselected" in quick.stdout, quick.stdout + quick.stderr

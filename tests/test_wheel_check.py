"""tools/wheel_check.py's content checks can fail: a wheel missing a module, holding test data
or bytecode, or without the console script is refused (``make test-wheel`` builds the real one)."""
from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import wheel_check  # noqa: E402


def fake_wheel(tmp_path: Path, drop: str = "", add: str = "", script: bool = True,
               license: bytes | None = None) -> Path:
    names = set(wheel_check.MUST)
    for folder, package in (("ranet_edge", "ranet_edge"), ("export", "ranet_edge/export"),
                            ("runtime", "ranet_edge/runtime")):
        names |= {f"{package}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts}
    names = (names - {drop}) | ({add} if add else set())
    wheel = tmp_path / "ranet_edge-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n in sorted(names):
            z.writestr(n, b"x")
        if license != b"":
            z.writestr("ranet_edge-0.dist-info/licenses/LICENSE",
                       (ROOT / "LICENSE").read_bytes() if license is None else license)
        z.writestr("ranet_edge-0.dist-info/entry_points.txt",
                   "[console_scripts]\nranet-edge = ranet_edge.cli:main\n" if script else "")
    return wheel


def test_a_complete_wheel_passes(tmp_path):
    summary = wheel_check.check_wheel_contents(fake_wheel(tmp_path))
    assert summary["groups"]["schemas"]["files"] == 2 and summary["groups"]["python modules"]["files"] > 50


@pytest.mark.parametrize("kw, says", [
    ({"drop": "ranet_edge/runtime/chain.py"}, "lacks"),
    ({"drop": "ranet_edge/assets/default-bundle/manifest.json"}, "lacks"),
    ({"drop": "ranet_edge/export/partition.py"}, "lacks modules of the source tree"),
    ({"add": "tests/data/cifar10-c1.pth"}, "holds files it should not"),
    ({"add": "ranet_edge/runtime/__pycache__/chain.cpython-311.pyc"}, "holds files it should not"),
    ({"add": "benchmarks/results/eval.json"}, "holds files it should not"),
    ({"script": False}, "console script"),
    ({"license": b""}, "carries no LICENSE"),
    ({"license": b"Copyright (c) someone else"}, "differs from the repository's LICENSE"),
])
def test_a_wrong_wheel_is_refused(tmp_path, kw, says):
    with pytest.raises(wheel_check.CheckFailed, match=says):
        wheel_check.check_wheel_contents(fake_wheel(tmp_path, **kw))


def fake_sdist(tmp_path: Path, license: bytes | None) -> Path:
    sdist = tmp_path / "ranet_edge-0.tar.gz"
    files = {"ranet_edge-0/setup.cfg": b"[metadata]\n"}
    if license is not None:
        files["ranet_edge-0/LICENSE"] = license
    with tarfile.open(sdist, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return sdist


def test_the_sdist_carries_the_license(tmp_path):
    assert wheel_check.check_sdist_contents(fake_sdist(tmp_path, (ROOT / "LICENSE").read_bytes())) == 2
    with pytest.raises(wheel_check.CheckFailed, match="carries no LICENSE"):
        wheel_check.check_sdist_contents(fake_sdist(tmp_path, None))
    with pytest.raises(wheel_check.CheckFailed, match="differs from the repository's LICENSE"):
        wheel_check.check_sdist_contents(fake_sdist(tmp_path, b"All rights reserved"))

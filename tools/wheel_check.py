"""The wheel is the product: build the sdist and wheel, check them, install the wheel with
``[cpu]`` into a fresh virtual environment and run it from outside the source tree.

    python tools/wheel_check.py [--out build/wheel-check] [--constraints constraints.txt]

Steps, each failing with one line naming what is wrong:

1. ``python -m build`` -> sdist and wheel in ``OUT/dist``; ``twine check --strict`` on both.
2. The wheel's file list against what it must hold (every module of ``ranet_edge``,
   ``ranet_edge.export`` and ``ranet_edge.runtime`` mapped through ``package_dir``, the shipped
   bundle, checkpoint, sample images and JSON Schemas, the ``ranet-edge`` console script) and
   what it must not (tests, test data, benchmarks, docs, the JS package, build outputs,
   bytecode): any file outside the allowed patterns fails. The wheel's ``.dist-info`` and the
   sdist's top folder carry ``LICENSE``, byte for byte the repository's. The sdist likewise
   holds no build outputs or environments.
3. A fresh venv in ``OUT/venv``; ``pip install -c constraints.txt 'WHEEL[cpu]'``.
4. From a temporary directory outside the source tree: ``ranet-edge --version``,
   ``ranet-edge demo`` and ``ranet-edge predict`` (the installed shipped bundle and the demo's
   bundle) on a PNG of a shipped sample image, checking that ``ranet_edge`` was imported from the
   venv, not from the checkout.

Writes ``OUT/report.json`` (sizes, file counts, timings) and prints a summary.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MUST = [  # in the wheel, by path
    "ranet_edge/__init__.py", "ranet_edge/cli/__init__.py", "ranet_edge/serve/__init__.py",
    "ranet_edge/model/ranet.py", "ranet_edge/export/__init__.py", "ranet_edge/export/exporter.py",
    "ranet_edge/export/spec.py", "ranet_edge/runtime/__init__.py", "ranet_edge/runtime/chain.py",
    "ranet_edge/runtime/ortbuilds.py", "ranet_edge/runtime/evaluation/__init__.py",
    "ranet_edge/schemas/manifest.schema.json",
    "ranet_edge/schemas/thresholds.schema.json", "ranet_edge/assets/default.pt",
    "ranet_edge/assets/cifar10-val-500.npz", "ranet_edge/assets/default-bundle/manifest.json",
    "ranet_edge/assets/default-bundle/thresholds.json", "ranet_edge/assets/default-bundle/monolithic.onnx",
    "ranet_edge/serve/_oip_descriptor.py", "ranet_edge/serve/grpc_predict_v2.proto",
]
ALLOWED = [  # every file of the wheel matches one of these
    "ranet_edge/*.py", "ranet_edge/*/*.py",
    "ranet_edge/assets/default.pt", "ranet_edge/assets/cifar10-val-500.npz",
    "ranet_edge/assets/default-bundle/manifest.json", "ranet_edge/assets/default-bundle/thresholds.json",
    "ranet_edge/assets/default-bundle/*.onnx", "ranet_edge/schemas/*.schema.json",
    # the default model converted for the Qualcomm HTP (`convert --to qnn`, EPContext binaries)
    "ranet_edge/assets/qnn-bundle/manifest.json", "ranet_edge/assets/qnn-bundle/thresholds.json",
    "ranet_edge/assets/qnn-bundle/*.onnx",
    "ranet_edge/serve/grpc_predict_v2.proto",  # the Open Inference Protocol's gRPC service, for client stubs
    "ranet_edge-*.dist-info/*",
]
# The MIT text (setup.cfg's license_files): setuptools puts it in .dist-info/licenses/ (metadata
# 2.4) or, before that, at the top of .dist-info/.
LICENSE_IN_WHEEL = ["ranet_edge-*.dist-info/licenses/LICENSE", "ranet_edge-*.dist-info/LICENSE"]
SDIST_FORBIDDEN = [".venv", ".venv-lean", "node_modules", "build", "__pycache__", ".pytest_cache", ".ruff_cache",
                   "site"]


class CheckFailed(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"wheel check: {message}")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise CheckFailed(f"`{' '.join(map(str, cmd))}` failed ({r.returncode}): {' | '.join(tail)}")
    return r


def check_wheel_contents(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        sizes = {i.filename: i.file_size for i in z.infolist()}
        entry_points = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    missing = [m for m in MUST if m not in names]
    if missing:
        raise CheckFailed(f"{wheel.name} lacks {missing}")
    stray = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in ALLOWED)]
    stray += [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tmp"))]
    if stray:
        raise CheckFailed(f"{wheel.name} holds files it should not: {sorted(set(stray))[:10]}")
    sources = {p.relative_to(ROOT / folder).as_posix(): package for folder, package in
               (("ranet_edge", "ranet_edge"), ("export", "ranet_edge/export"), ("runtime", "ranet_edge/runtime"))
               for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    want = {f"{package}/{rel}" for rel, package in sources.items()}
    if not want <= set(names):
        raise CheckFailed(f"{wheel.name} lacks modules of the source tree: {sorted(want - set(names))[:10]}")
    licenses = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in LICENSE_IN_WHEEL)]
    if not licenses:
        raise CheckFailed(f"{wheel.name} carries no LICENSE in its .dist-info; setup.cfg needs license_files = LICENSE")
    with zipfile.ZipFile(wheel) as z:
        if z.read(licenses[0]) != (ROOT / "LICENSE").read_bytes():
            raise CheckFailed(f"{wheel.name}'s {licenses[0]} differs from the repository's LICENSE; rebuild the wheel")
    if "ranet-edge = ranet_edge.cli:main" not in entry_points:
        raise CheckFailed(f"{wheel.name} has no ranet-edge console script (entry_points.txt: {entry_points!r})")
    groups: dict[str, list[int]] = {}
    for n in names:
        key = ("dist-info" if ".dist-info/" in n else "python modules" if n.endswith(".py") else
               "default bundle" if "default-bundle/" in n else "qnn bundle" if "qnn-bundle/" in n else "schemas" if "/schemas/" in n else n)
        groups.setdefault(key, []).append(sizes[n])
    return {"files": len(names), "unpacked_bytes": sum(sizes.values()),
            "groups": {k: {"files": len(v), "bytes": sum(v)} for k, v in sorted(groups.items())}}


def check_sdist_contents(sdist: Path) -> int:
    """No build outputs or environments (setuptools' own ``*.egg-info`` at the top is expected);
    the repository's ``LICENSE`` at the top."""
    with tarfile.open(sdist) as t:
        names = t.getnames()
        top = next((n for n in names if len(Path(n).parts) == 2 and Path(n).name == "LICENSE"), None)
        if top is None:
            raise CheckFailed(f"{sdist.name} carries no LICENSE at its top; setup.cfg needs license_files = LICENSE")
        if t.extractfile(top).read() != (ROOT / "LICENSE").read_bytes():
            raise CheckFailed(f"{sdist.name}'s {top} differs from the repository's LICENSE; rebuild the sdist")
    bad = [n for n in names if set(Path(n).parts[1:]) & set(SDIST_FORBIDDEN)
           or n.endswith((".pyc", ".tmp")) or "tests/data" in n]
    if bad:
        raise CheckFailed(f"{sdist.name} holds build outputs, environments or test data: {bad[:10]}")
    return len(names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "wheel-check")
    ap.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that builds and makes the venv")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    dist = out / "dist"
    timings = {}

    t0 = time.perf_counter()
    run([args.python, "-m", "build", "--sdist", "--wheel", "--outdir", dist, ROOT], cwd=ROOT)
    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    run([args.python, "-m", "twine", "check", "--strict", wheel, sdist])
    timings["build_and_twine_s"] = time.perf_counter() - t0
    contents = check_wheel_contents(wheel)
    sdist_files = check_sdist_contents(sdist)

    t0 = time.perf_counter()
    venv = out / "venv"
    run([args.python, "-m", "venv", venv])
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", args.constraints.resolve(),
         f"{wheel}[cpu]"])
    timings["fresh_venv_install_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exe = venv / "bin" / "ranet-edge"
    with tempfile.TemporaryDirectory(prefix="ranet-edge-wheel-") as tmp:  # outside the source tree
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PYTHONWARNINGS"] = "ignore"
        where = run([py, "-c", "import ranet_edge, ranet_edge.runtime.chain as c; from ranet_edge.assets import "
                     "DEFAULT_BUNDLE as b; print(ranet_edge.__file__); print(c.__file__); print(b)"],
                    cwd=work, env=env).stdout.split()
        if not all(Path(p).resolve().is_relative_to(venv) for p in where):
            raise CheckFailed(f"ranet_edge was imported from {where}, not from the fresh venv {venv}")
        bundle = Path(where[2])
        version = run([exe, "--version"], cwd=work, env=env).stdout.strip()
        demo = run([exe, "demo", "--out", work / "demo"], cwd=work, env=env, timeout=900).stdout
        if "early exit at work" not in demo or not (work / "demo" / "bench.json").is_file():
            raise CheckFailed(f"ranet-edge demo did not finish: {demo.strip().splitlines()[-3:]}")
        run([py, "-c", "import sys, cv2, numpy as np; from ranet_edge.assets import SAMPLE_IMAGES\n"
             "with np.load(SAMPLE_IMAGES) as z: x = z['x'][3]\n"
             "cv2.imwrite(sys.argv[1], cv2.cvtColor(x, cv2.COLOR_RGB2BGR))", work / "sample.png"], cwd=work, env=env)
        predictions = []
        for b in (bundle, work / "demo" / "bundle"):
            r = run([exe, "predict", b, "sample.png", "--json"], cwd=work, env=env)
            predictions.append(json.loads(r.stdout))
        lines = demo.strip().splitlines()
    timings["demo_and_predict_s"] = time.perf_counter() - t0

    report = {"wheel": wheel.name, "wheel_bytes": wheel.stat().st_size, "sdist": sdist.name,
              "sdist_bytes": sdist.stat().st_size, "sdist_files": sdist_files, "wheel_contents": contents,
              "version": version, "predict": predictions, "demo_last_line": lines[-1],
              "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    mb = 1 / 1e6
    print(f"wheel check: {wheel.name} {report['wheel_bytes'] * mb:.1f} MB ({contents['files']} files, "
          f"{contents['unpacked_bytes'] * mb:.1f} MB unpacked), {sdist.name} {report['sdist_bytes'] * mb:.1f} MB; "
          f"twine check passed")
    for name, g in contents["groups"].items():
        print(f"  {name:<40} {g['files']:>4} files {g['bytes'] * mb:>8.2f} MB")
    print(f"  installed with [cpu] into a fresh venv; {version}; demo: {lines[-1]}")
    print(f"  predict sample.png: {predictions[0][0]['class']} at exit {predictions[0][0]['exit']} (shipped bundle), "
          f"{predictions[1][0]['class']} at exit {predictions[1][0]['exit']} (the demo's)")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()

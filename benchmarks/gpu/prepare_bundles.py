"""Make the bundles the GPU check runs, on any machine with the export extra (torch, onnx):

    python benchmarks/gpu/prepare_bundles.py [--out build/gpu-bundles]

writes ``default-fp16`` (the shipped default bundle converted to fp16), ``c1`` (RANet C-1 from
the golden checkpoint ``tests/data/cifar10-c1.pth``, with its monolithic graph) and
``c1-fp16``. The shipped default bundle itself is used in place. A GPU host needs neither
torch nor onnx when the directory is carried along (``check.sh --bundles DIR``).

It also writes ``imagenet-ranet`` (the ImageNet RANet of the official flags, preset
``imagenet``) and ``imagenet-msdnet`` (the official ImageNet MSDNet, preset
``msdnet-imagenet``), random weights, thresholds for a fixed share of images per exit, as
seeded skeletons (``seeded.py``): a few MB that the check turns back into the full graphs
with numpy. ``--only NAME,...`` makes a subset.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seeded  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
C1_CHECKPOINT = REPO / "tests" / "data" / "cifar10-c1.pth"
CIFAR = ("default-fp16", "c1", "c1-fp16")  # read the shipped 32x32 images (seconds to make)
NAMES = ("default", *CIFAR, *seeded.SEEDED)


def _usable(path: Path) -> bool:
    from ranet_edge.errors import RanetEdgeError
    from ranet_edge.runtime.manifest import load_manifest

    try:
        load_manifest(path, verify=True)
    except RanetEdgeError:
        return False
    return path.name not in seeded.SEEDED or seeded.is_seeded(path)


def find(out: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The bundles already there (the shipped default always), and why the others are missing."""
    from ranet_edge.assets import DEFAULT_BUNDLE

    found, missing = {"default": Path(DEFAULT_BUNDLE)}, {}
    for name in NAMES[1:]:
        if _usable(out / name):
            found[name] = out / name
        else:
            missing[name] = f"not in {out}: run `python benchmarks/gpu/prepare_bundles.py --out {out}`"
    return found, missing


def prepare(out: Path, log: Callable[[str], None] = print,
            only: set[str] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Make whatever ``find`` reports missing (of ``only``, when given); bundles that cannot be
    made stay missing, with the reason (no torch/onnx on this host, for instance)."""
    found, missing = find(out)
    if only is not None:
        missing = {k: v for k, v in missing.items() if k in only}
    if not missing:
        return found, missing
    try:
        from ranet_edge.export.convert import convert_bundle
        from ranet_edge.export.exporter import ExportSpec
        from ranet_edge.export.ranet import export_checkpoint
    except ImportError as exc:
        why = f"cannot make it here ({exc}); make it on a machine with `pip install 'ranet-edge[export]'` and carry it"
        return found, {name: f"{reason}; {why}" for name, reason in missing.items()}
    quiet = lambda m: None  # noqa: E731
    if "c1" in missing:
        log(f"exporting RANet C-1 to {out / 'c1'}")
        export_checkpoint(C1_CHECKPOINT, out / "c1", ExportSpec(monolithic=True), force=True, log=quiet)
    for name in ("default-fp16", "c1-fp16"):
        if name in missing:
            log(f"converting {name}")
            src = found["default"] if name == "default-fp16" else out / "c1"
            convert_bundle(src, out / name, "fp16", force=True, log=quiet)
    for name, preset in seeded.SEEDED.items():
        if name in missing:
            make_seeded(out, name, preset, log)
    return find(out)


def make_seeded(out: Path, name: str, preset: str, log: Callable[[str], None] = print) -> dict:
    """Export ``preset`` with random weights, strip it to a seeded skeleton, set fixed-share
    thresholds; staged beside ``out/name`` and renamed into place. Seconds per step."""
    stage = out / f".{name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    took = {"export_s": seeded.export_random(preset, stage, log)}
    t0 = time.perf_counter()
    seeded.strip(stage)
    took["strip_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    seeded.set_thresholds(stage, lambda m: log(m.replace(stage.name, name)))
    took["thresholds_s"] = time.perf_counter() - t0
    seeded.drop_weights(stage)
    shutil.rmtree(out / name, ignore_errors=True)
    stage.rename(out / name)
    size = sum(p.stat().st_size for p in (out / name).iterdir())
    log(f"{name}: {size / 1e6:.1f} MB to carry; " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()))
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "build" / "gpu-bundles"))
    ap.add_argument("--keep-weights", action="store_true",
                    help="keep the seeded bundles' regenerated .weights files (default: removed, so they carry small)")
    ap.add_argument("--only", default=None, help=f"comma list of bundles to make: {', '.join(NAMES[1:])}")
    args = ap.parse_args()
    only = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    if only is not None and only - set(NAMES[1:]):
        ap.error(f"--only takes a comma list of {', '.join(NAMES[1:])}; got {args.only!r}")
    found, missing = prepare(Path(args.out), only=only)
    for name, path in found.items():
        if name in seeded.SEEDED and not args.keep_weights:  # what travels: the skeleton alone
            seeded.drop_weights(path)
        size = sum(p.stat().st_size for p in path.iterdir()) / 1e6
        print(f"{name:<16} {path} ({size:.1f} MB)")
    for name, why in missing.items():
        print(f"{name:<16} missing: {why}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()

"""Make the bundles the GPU check runs, on any machine with the export extra (torch, onnx):

    python benchmarks/gpu/prepare_bundles.py [--out build/gpu-bundles]

writes ``default-fp16`` (the shipped default bundle converted to fp16), ``c1`` (RANet C-1 from
the golden checkpoint ``tests/data/cifar10-c1.pth``, with its monolithic graph) and
``c1-fp16``. The shipped default bundle itself is used in place. A GPU host needs neither
torch nor onnx when the directory is carried along (``check.sh --bundles DIR``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
C1_CHECKPOINT = REPO / "tests" / "data" / "cifar10-c1.pth"
NAMES = ("default", "default-fp16", "c1", "c1-fp16")


def _usable(path: Path) -> bool:
    from ranet_edge.errors import RanetEdgeError
    from ranet_edge.runtime.manifest import load_manifest

    try:
        load_manifest(path, verify=True)
        return True
    except RanetEdgeError:
        return False


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


def prepare(out: Path, log: Callable[[str], None] = print) -> tuple[dict[str, Path], dict[str, str]]:
    """Make whatever ``find`` reports missing; bundles that cannot be made stay missing, with
    the reason (no torch/onnx on this host, for instance)."""
    found, missing = find(out)
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
    return find(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "build" / "gpu-bundles"))
    args = ap.parse_args()
    found, missing = prepare(Path(args.out))
    for name, path in found.items():
        print(f"{name:<14} {path}")
    for name, why in missing.items():
        print(f"{name:<14} missing: {why}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()

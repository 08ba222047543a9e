"""Cut a wheel into parts that each fit one device call, and join them there.

    python benchmarks/gpu/wheel_parts.py split WHEEL DIR [--mib 40]   # here: DIR/WHEEL.part-00 ..
    python benchmarks/gpu/wheel_parts.py join DIR                     # there: DIR/WHEEL, sha256 checked

A device call carries at most 64 MiB with the working tree, so the onnxruntime-gpu wheel
(256 MB for 1.31.1, cp312) travels as parts in back-to-back calls (each call carries one part
path; the parts already there stay) and is joined by ``check.sh --wheels DIR``.
``DIR/WHEEL.sha256`` holds the whole wheel's digest and the number of parts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path


def split(wheel: Path, out: Path, mib: float) -> list[Path]:
    data = wheel.read_bytes()
    size = int(mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, start in enumerate(range(0, len(data), size)):
        p = out / f"{wheel.name}.part-{i:02d}"
        p.write_bytes(data[start:start + size])
        parts.append(p)
    (out / f"{wheel.name}.sha256").write_text(json.dumps(
        {"wheel": wheel.name, "sha256": hashlib.sha256(data).hexdigest(), "parts": len(parts), "bytes": len(data)}) + "\n")
    return parts


def join(folder: Path) -> Path:
    """Join the parts in ``folder`` into the wheel (a no-op when it is already there, whole)."""
    records = sorted(folder.glob("*.whl.sha256"))
    if not records:
        raise SystemExit(f"error: no *.whl.sha256 in {folder}: split the wheel with `wheel_parts.py split` first")
    rec = json.loads(records[-1].read_text())
    target = folder / rec["wheel"]
    if target.is_file() and target.stat().st_size == rec["bytes"]:
        return target
    parts = [folder / f"{rec['wheel']}.part-{i:02d}" for i in range(rec["parts"])]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"error: {len(missing)} of {rec['parts']} parts missing in {folder}: {', '.join(missing)}; "
                         "carry them in the earlier calls")
    h = hashlib.sha256()
    tmp = folder / f".{rec['wheel']}.tmp"
    with open(tmp, "wb") as f:
        for p in parts:
            chunk = p.read_bytes()
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != rec["sha256"]:
        tmp.unlink()
        raise SystemExit(f"error: the joined parts' sha256 is not {rec['sha256'][:12]}: a part is damaged; carry it again")
    os.replace(tmp, target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("wheel")
    s.add_argument("out")
    s.add_argument("--mib", type=float, default=40.0, help="part size in MiB (default 40)")
    j = sub.add_parser("join")
    j.add_argument("folder")
    args = ap.parse_args()
    if args.cmd == "split":
        for p in split(Path(args.wheel), Path(args.out), args.mib):
            print(p)
    else:
        print(join(Path(args.folder)))


if __name__ == "__main__":
    sys.exit(main())

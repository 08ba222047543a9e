#!/usr/bin/env bash
# Export byte reproducibility on arm64: the shipped default checkpoint exported under qemu-user
# in the arm64 Debian root of `make test-arm64`, with PyPI's aarch64 torch, and every graph
# compared byte for byte (sha256) with the shipped bundle. Too slow for every CI run (emulated
# torch): run by hand, root on Linux x86_64, and commit the result.
#   bash benchmarks/arm64_export_repro.sh      -> benchmarks/results/arm64_export.json
# ARM64_TORCH: the torch version (default 2.10.0: from 2.11 on, PyPI's aarch64 wheels are CUDA
# builds that need nvidia-* packages, so 2.10.0 is the newest CPU one; the x86 export used
# 2.13.0). QEMU_CPU: the emulated CPU torch runs on (default neoverse-n1).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/arm64/common.sh
HOST_PYTHON=${HOST_PYTHON:-.venv/bin/python}
TORCH=${ARM64_TORCH:-2.10.0}
CPU=${QEMU_CPU:-neoverse-n1}
OUT=benchmarks/results/arm64_export.json
VENV=/opt/ranet-export-venv
T=/opt/ranet-export

t0=$(date +%s)
bash tools/arm64/setup_host.sh
arm64_umount_stale "$ARM64_ROOT"
bash tools/arm64/build_root.sh
mkdir -p "$ARM64_BUILD"
rm -rf "$ARM64_BUILD/export-dist"
"$HOST_PYTHON" -m build --wheel --outdir "$ARM64_BUILD/export-dist" . >"$ARM64_BUILD/export-wheel-build.log" 2>&1
wheels=("$ARM64_BUILD"/export-dist/*.whl)

trap arm64_umount EXIT
arm64_mount "$ARM64_ROOT"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ARM64_ROOT$ARM64_CERT"
rm -rf --one-file-system "${ARM64_ROOT:?}$T"
mkdir -p "$ARM64_ROOT$T"
cp "${wheels[0]}" "$ARM64_ROOT$T/"
# the project's pins, but this torch
grep -v '^torch==' constraints.txt > "$ARM64_ROOT$T/constraints.txt"
echo "torch==$TORCH" >> "$ARM64_ROOT$T/constraints.txt"
run() { chroot "$ARM64_ROOT" "${arm64_env[@]}" QEMU_CPU="$CPU" PATH="$VENV/bin:/usr/bin:/bin" "$@"; }
whl="$T/$(basename "${wheels[0]}")"
if ! run test -x "$VENV/bin/python" || ! run python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')"; then
  rm -rf --one-file-system "${ARM64_ROOT:?}$VENV"
  run /usr/bin/python3 -m venv "$VENV"
  run pip install --quiet --only-binary=:all: -c "$T/constraints.txt" "$whl[cpu,export]"
else
  run pip install --quiet --no-deps --force-reinstall "$whl"
fi
t_install=$(( $(date +%s) - t0 ))
start=$(date +%s)
run sh -c "cd $T && ranet-edge export \$(python -c 'from ranet_edge.assets import DEFAULT_CHECKPOINT as c; print(c)') -o $T/bundle --monolithic --force" \
  > "$ARM64_BUILD/export.log" 2>&1 || { tail -5 "$ARM64_BUILD/export.log" >&2; exit 1; }
t_export=$(( $(date +%s) - start ))
versions=$(run python -c "import json, platform, torch, onnx, onnxruntime; print(json.dumps({'machine': platform.machine(), 'torch': torch.__version__, 'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__}))")
"$HOST_PYTHON" - "$ARM64_ROOT$T/bundle" "$OUT" "$versions" "$CPU" "$t_install" "$t_export" <<'PY'
import hashlib, json, os, sys
from pathlib import Path
arm, out, versions, cpu, t_install, t_export = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), *sys.argv[4:]
shipped = Path("ranet_edge/assets/default-bundle")
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
graphs = sorted(p.name for p in shipped.glob("*.onnx"))
rows = {g: {"shipped": sha(shipped / g), "arm64": sha(arm / g) if (arm / g).exists() else None} for g in graphs}
for r in rows.values():
    r["identical"] = r["shipped"] == r["arm64"]
ship_tools = json.loads((shipped / "manifest.json").read_text())["tools"]
result = {"checkpoint": "ranet_edge/assets/default.pt", "command": "ranet-edge export default.pt -o bundle --monolithic",
          "arm64": {**versions, "qemu_cpu": cpu}, "shipped_exported_with": ship_tools,
          "graphs": rows, "identical": sum(r["identical"] for r in rows.values()), "total": len(rows),
          "seconds": {"setup_and_install": int(t_install), "export": int(t_export)}}
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(result, indent=2) + "\n")
os.replace(tmp, out)
print(f"arm64 export: {result['identical']}/{result['total']} graphs byte-identical with the shipped bundle "
      f"(torch {versions['torch']} aarch64 vs {ship_tools['torch']} x86_64; export {t_export} s) -> {out}")
sys.exit(0 if result["identical"] == result["total"] else 1)
PY

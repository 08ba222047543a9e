#!/usr/bin/env bash
# Issue 32's device check, the last of back-to-back device calls (docs/guides/gpu-cuda-graphs.md):
# the earlier calls carried the onnxruntime-gpu wheel's parts into build/wheels; this one
# carries the last part and the seeded ImageNet skeletons, joins the wheel, and runs the
# capture and imagenet sections of check.sh within 8 minutes. Results land in $OUT.
#
#   bash benchmarks/gpu/device_check.sh [extra check.py options]
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/build/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia_smi.txt" 2>&1 || true
timeout 470 bash "$REPO/benchmarks/gpu/check.sh" --wheels "$REPO/build/wheels" --python "${PYTHON:-python3}" \
  --bundles "$REPO/build/gpu-bundles" --no-prepare --sections capture,imagenet --budget-s 330 \
  --cudnn-search HEURISTIC --out "$OUT/gpu_check_cuda_capture.json" "$@" 2>&1 | tee "$OUT/gpu_check_cuda_capture.log"
rc=${PIPESTATUS[0]}
echo "device_check.sh: check.sh exit $rc after $(( $(date +%s) - START )) s"
exit "$rc"

#!/usr/bin/env bash
# The prepared GPU check: a GPU host with this repository -> one JSON report and a printed
# table, in at most 6 minutes (check.py starts no section after --budget-s, 300 s).
#
#   benchmarks/gpu/check.sh [--provider cuda|cpu] [--wheels DIR] [--python PY] [--cuda-libs DIRS]
#                           [check.py options: --bundles DIR --out JSON --quick --cudnn-search MODE ...]
#
#   --provider cuda   (default) the CUDA provider; cpu: the same report on the CPU (dry run)
#   --wheels DIR      air-gapped hosts: when this Python's onnxruntime has no CUDA provider,
#                     install the onnxruntime_gpu wheel for this Python from DIR with
#                     `pip install --no-deps --target build/gpu-check/site` (nothing is
#                     downloaded; onnxruntime-gpu 1.31.1 for Python 3.12 targets CUDA 13); DIR may
#                     hold the wheel as parts (wheel_parts.py split): they are joined first
#   --python PY       the interpreter (default: python3 on PATH; for --provider cpu the
#                     repository's .venv when there is one). It needs numpy; torch and onnx
#                     are not needed when the bundles were prepared beforehand.
#   --cuda-libs DIRS  extra directories (colon-separated) holding libcudart/libcublas/libcudnn
#
# CUDA libraries: the check uses those already on the host: every nvidia/*/lib directory of
# this Python's site-packages (the cu12/cu13 cuBLAS/cuDNN wheels a PyTorch environment
# brings), /usr/local/cuda/lib64, and --cuda-libs; it puts them on LD_LIBRARY_PATH and calls
# onnxruntime.preload_dlls(). TensorRT is used when libnvinfer loads; the report says why not.
#
# Bundles: the shipped default bundle, plus default-fp16, c1, c1-fp16 and the seeded ImageNet
# ones from --bundles DIR (default build/gpu-bundles). Make them beforehand on any machine with
# the export extra:  python benchmarks/gpu/prepare_bundles.py --out build/gpu-bundles
# and carry the directory along; on a host with torch and onnx the check makes whatever is
# missing itself (with --quick the CIFAR ones only: the ImageNet exports take ~10 minutes).
# The CPU dry run (`make gpu-dry-run`): --provider cpu --quick; exit 0 = no check failed
# (checks that need a GPU are listed as skipped, with the reason).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PROVIDER=cuda
WHEELS=""
PY=${PYTHON:-}
EXTRA_LIBS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --provider) PROVIDER=${2:-}; shift 2 ;;
    --provider=*) PROVIDER=${1#*=}; shift ;;
    --wheels) WHEELS=${2:-}; shift 2 ;;
    --wheels=*) WHEELS=${1#*=}; shift ;;
    --python) PY=${2:-}; shift 2 ;;
    --python=*) PY=${1#*=}; shift ;;
    --cuda-libs) EXTRA_LIBS=${2:-}; shift 2 ;;
    --cuda-libs=*) EXTRA_LIBS=${1#*=}; shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$PROVIDER" in
  cuda|cpu) ;;
  *) echo "error: --provider must be cuda or cpu, got '$PROVIDER'" >&2; exit 2 ;;
esac
if [ -z "$PY" ]; then
  if [ "$PROVIDER" = cpu ] && [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
  else PY=$(command -v python3 || true); fi
fi
if [ -z "$PY" ] || ! "$PY" -c "import numpy" 2>/dev/null; then
  echo "error: no Python with numpy found (${PY:-none}); pass --python PATH" >&2; exit 2
fi
START=$(date +%s)

if [ "$PROVIDER" = cuda ]; then
  SITE="$REPO/build/gpu-check/site"
  has_cuda() {
    "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null
  }
  [ -d "$SITE/onnxruntime" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! has_cuda; then
    if [ -z "$WHEELS" ]; then
      echo "error: $PY has no onnxruntime with the CUDA provider; pip install 'ranet-edge[gpu]'," \
           "or pass --wheels DIR holding an onnxruntime_gpu wheel for this Python" >&2
      exit 2
    fi
    TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
    if ls "$WHEELS"/onnxruntime_gpu-*-"$TAG"-*.whl.sha256 >/dev/null 2>&1; then  # parts carried call by call
      "$PY" "$REPO/benchmarks/gpu/wheel_parts.py" join "$WHEELS" >/dev/null || exit 2
    fi
    WHL=$(ls "$WHEELS"/onnxruntime_gpu-*-"$TAG"-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$WHL" ]; then
      echo "error: no onnxruntime_gpu wheel for $TAG in $WHEELS ($(ls "$WHEELS" 2>/dev/null | tr '\n' ' '))" >&2
      exit 2
    fi
    echo "installing $(basename "$WHL") into $SITE (no dependencies, nothing downloaded)"
    rm -rf "$SITE" && mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE" "$WHL"
    else  # a wheel is a zip archive: without pip, unpack it where pip --target would
      "$PY" -m zipfile -e "$WHL" "$SITE"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! has_cuda; then
      echo "error: $(basename "$WHL") installed but onnxruntime still lists no CUDA provider" >&2; exit 2
    fi
  fi
  # CUDA libraries already on the host (never downloaded)
  LIBS=$("$PY" - <<'EOF'
import glob, os, site
roots = [*site.getsitepackages(), site.getusersitepackages()]
dirs = []
for root in roots:
    for pattern in ("nvidia/*/lib", "nvidia/*/*/lib", "tensorrt_libs", "tensorrt"):
        dirs += [d for d in glob.glob(os.path.join(root, pattern)) if glob.glob(os.path.join(d, "lib*.so*"))]
dirs += [d for d in ("/usr/local/cuda/lib64",) if os.path.isdir(d)]
print(":".join(dict.fromkeys(dirs)))
EOF
)
  LIBS="${EXTRA_LIBS:+$EXTRA_LIBS:}$LIBS"
  [ -n "$LIBS" ] && export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "CUDA library directories: ${LIBS:-none found (relying on the system loader)}"
fi

echo "python $PY ($("$PY" -c 'import platform; print(platform.python_version())')), setup $(( $(date +%s) - START )) s"
"$PY" "$REPO/benchmarks/gpu/check.py" --provider "$PROVIDER" ${ARGS[@]+"${ARGS[@]}"}

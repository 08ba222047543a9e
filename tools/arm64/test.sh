#!/usr/bin/env bash
# The arm64 job (`make test-arm64`): the runtime's wheel on arm64 Debian under qemu-user.
#   HOST_PYTHON=.venv/bin/python bash tools/arm64/test.sh
# 1. the host runs arm64 programs (tools/arm64/setup_host.sh: binfmt, qemu-user-static);
# 2. an arm64 bookworm root, built once under build/arm64-root (tools/arm64/build_root.sh);
# 3. the wheel, built here, installed with [cpu] and pytest in a venv in the root (install_wheel.sh);
# 4. the tests named in tools/arm64/tests.txt, copied into the root (not the source tree, which would
#    shadow the installed wheel), run there with pytest;
# 5. the shipped bundle on its 500 sample images on arm64 and on this host: labels, exits, inputs
#    and confidences compared (tools/arm64/agreement.py -> build/arm64/agreement.json).
# Where this machine cannot run it (not Linux x86_64, not root, no apt-get) it says so in one line
# and exits 0, or 1 when ARM64_REQUIRED=1 (CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/arm64/common.sh
HOST_PYTHON=${HOST_PYTHON:-.venv/bin/python}

cannot() {
  if [ "${ARM64_REQUIRED:-0}" = 1 ]; then
    echo "test-arm64: FAILED, ARM64_REQUIRED=1 but $1" >&2
    exit 1
  fi
  echo "test-arm64: skipped, $1"
  exit 0
}
[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || cannot "it needs a Linux x86_64 host (this is $(uname -s) $(uname -m))"
[ "$(id -u)" = 0 ] || cannot "it needs root (binfmt_misc, mmdebstrap, chroot)"
command -v apt-get >/dev/null || cannot "it needs Debian's apt-get (qemu-user-static, mmdebstrap)"
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
  || cannot "binfmt_misc cannot be mounted here (a container without CAP_SYS_ADMIN?)"

t0=$(date +%s)
step() { echo "test-arm64: $1 ($(( $(date +%s) - t0 )) s)"; }
bash tools/arm64/setup_host.sh
arm64_umount_stale "$ARM64_ROOT"
bash tools/arm64/build_root.sh
step "root ready"

mkdir -p "$ARM64_BUILD"
rm -rf "$ARM64_BUILD/dist"
"$HOST_PYTHON" -m build --wheel --outdir "$ARM64_BUILD/dist" . >"$ARM64_BUILD/wheel-build.log" 2>&1 \
  || { tail -5 "$ARM64_BUILD/wheel-build.log" >&2; echo "test-arm64: the wheel did not build ($ARM64_BUILD/wheel-build.log)" >&2; exit 1; }
wheels=("$ARM64_BUILD"/dist/*.whl)
bash tools/arm64/install_wheel.sh "${wheels[0]}"
step "wheel installed"

# the tests, and the files they read beside them, in a fresh folder of the root
T=/opt/ranet-tests
rm -rf --one-file-system "${ARM64_ROOT:?}$T"
mkdir -p "$ARM64_ROOT$T/tests"
cp tests/*.py "$ARM64_ROOT$T/tests/"
cp pyproject.toml "$ARM64_ROOT$T/"  # pytest's settings (markers, -ra)
cp tools/arm64/agreement.py "$ARM64_ROOT$T/"
args=()
while read -r line; do
  line=${line%%#*}
  line=${line//[[:space:]]/}  # node ids hold no spaces
  [ -n "$line" ] || continue
  if [ "${line:0:1}" = "!" ]; then args+=(--deselect "${line:1}"); else args+=("$line"); fi
done < tools/arm64/tests.txt

trap arm64_umount EXIT
arm64_mount "$ARM64_ROOT"
rc=0
chroot "$ARM64_ROOT" "${arm64_env[@]}" sh -c 'cd "$0" && exec pytest -q -p no:cacheprovider "$@"' \
  "$T" "${args[@]}" || rc=$?
step "tests done (pytest exit $rc)"

rm -f "$ARM64_BUILD/agreement.json"
if arm64_chroot "$ARM64_ROOT" python "$T/agreement.py" predict "$T/arm64.npz" 2> >(grep -v -i cpuinfo >&2); then
  cp "$ARM64_ROOT$T/arm64.npz" "$ARM64_BUILD/arm64.npz"
  "$HOST_PYTHON" tools/arm64/agreement.py predict "$ARM64_BUILD/x86_64.npz"
  "$HOST_PYTHON" tools/arm64/agreement.py compare "$ARM64_BUILD/arm64.npz" "$ARM64_BUILD/x86_64.npz" \
    --json "$ARM64_BUILD/agreement.json" || rc=1
else
  echo "test-arm64: the shipped bundle did not run on arm64 (above), no agreement to compare" >&2
  rc=1
fi
step "agreement done"
if [ "$rc" != 0 ]; then
  echo "test-arm64: FAILED (see above) after $(( $(date +%s) - t0 )) s" >&2
  exit "$rc"
fi
echo "test-arm64: passed in $(( $(date +%s) - t0 )) s"

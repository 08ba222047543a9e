#!/usr/bin/env bash
# Installs the project's wheel with [cpu] and pytest into a venv inside the arm64 root:
#   bash tools/arm64/install_wheel.sh WHEEL
# The venv (ROOT/opt/ranet-venv) is made once per constraints.txt; the wheel is reinstalled
# (without its dependencies, already there) only when its contents change. pip runs in the root
# under a clean environment with the host's CA bundle, which the host's network needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/arm64/common.sh
WHEEL=$1
[ -f "$WHEEL" ] || { echo "arm64 venv: no wheel at $WHEEL" >&2; exit 1; }
[ -f "$ARM64_ROOT/.recipe" ] || { echo "arm64 venv: no root at $ARM64_ROOT (run tools/arm64/build_root.sh)" >&2; exit 1; }

# What the venv is made of, and what the installed wheel holds (file names and contents, not the
# zip's timestamps, so a rebuilt but equal wheel is not reinstalled).
deps_key=$( (cat "$ARM64_ROOT/.recipe"; echo "[cpu] pytest"; cat constraints.txt) | sha256sum | cut -d' ' -f1)
wheel_key=$(python3 - "$WHEEL" <<'PY'
import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(z.namelist()):
        h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
print(h.hexdigest())
PY
)
venv_stamp="$ARM64_ROOT$ARM64_VENV/.deps"
wheel_stamp="$ARM64_ROOT$ARM64_VENV/.wheel"
if [ -f "$venv_stamp" ] && [ "$(cat "$venv_stamp")" = "$deps_key" ] && [ -f "$wheel_stamp" ] \
   && [ "$(cat "$wheel_stamp")" = "$wheel_key" ]; then
  echo "arm64 venv: cached (wheel unchanged)"
  exit 0
fi

trap arm64_umount EXIT
arm64_mount "$ARM64_ROOT"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ARM64_ROOT$ARM64_CERT"
rm -rf "$ARM64_ROOT/tmp/ranet-wheel"
mkdir -p "$ARM64_ROOT/tmp/ranet-wheel"
cp "$WHEEL" constraints.txt "$ARM64_ROOT/tmp/ranet-wheel/"
inroot_wheel=/tmp/ranet-wheel/$(basename "$WHEEL")
start=$(date +%s)
if [ ! -f "$venv_stamp" ] || [ "$(cat "$venv_stamp")" != "$deps_key" ]; then
  rm -rf --one-file-system "${ARM64_ROOT:?}$ARM64_VENV"
  arm64_chroot "$ARM64_ROOT" /usr/bin/python3 -m venv "$ARM64_VENV"
  arm64_chroot "$ARM64_ROOT" pip install --quiet --only-binary=:all: -c /tmp/ranet-wheel/constraints.txt \
    "$inroot_wheel[cpu]" pytest
  echo "$deps_key" > "$venv_stamp"
else
  arm64_chroot "$ARM64_ROOT" pip install --quiet --no-deps --force-reinstall "$inroot_wheel"
fi
echo "$wheel_key" > "$wheel_stamp"
rm -rf "$ARM64_ROOT/tmp/ranet-wheel"
echo "arm64 venv: installed $(basename "$WHEEL") in $(( $(date +%s) - start )) s"

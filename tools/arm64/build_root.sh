#!/usr/bin/env bash
# Builds the arm64 Debian root once, cached under build/arm64-root:
#   bash tools/arm64/build_root.sh
# mmdebstrap (minbase) into a temporary folder, renamed into place when complete. The stamp
# build/arm64-root/.recipe names the inputs; a changed recipe rebuilds, an equal one is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/arm64/common.sh

SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,git
MIRROR=${ARM64_MIRROR:-}   # empty: the host's apt sources
RECIPE="mmdebstrap --mode=root --arch=arm64 --variant=minbase --include=$PACKAGES $SUITE $MIRROR"

if [ -f "$ARM64_ROOT/.recipe" ] && [ "$(cat "$ARM64_ROOT/.recipe")" = "$RECIPE" ]; then
  echo "arm64 root: cached ($ARM64_ROOT)"
  exit 0
fi
mkdir -p "$(dirname "$ARM64_ROOT")"
TMP="$ARM64_ROOT.tmp"
arm64_umount_stale "$ARM64_ROOT"
rm -rf --one-file-system "$TMP"
start=$(date +%s)
# shellcheck disable=SC2086  # MIRROR is empty or one word
mmdebstrap --quiet --mode=root --arch=arm64 --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP" $MIRROR
arch=$(chroot "$TMP" /usr/bin/python3 -c "import platform; print(platform.machine())")
[ "$arch" = aarch64 ] || { echo "arm64 root: python3 in the new root reports '$arch', not aarch64" >&2; exit 1; }
echo "$RECIPE" > "$TMP/.recipe"
rm -rf --one-file-system "$ARM64_ROOT"
mv "$TMP" "$ARM64_ROOT"
echo "arm64 root: built in $(( $(date +%s) - start )) s ($(du -sh "$ARM64_ROOT" | cut -f1))"

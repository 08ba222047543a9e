#!/usr/bin/env bash
# Makes this x86_64 Debian host run arm64 programs: binfmt_misc mounted, Debian's
# qemu-user-static registered for aarch64, mmdebstrap and arch-test installed (root, apt).
#   bash tools/arm64/setup_host.sh
set -euo pipefail
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! command -v mmdebstrap >/dev/null || ! command -v arch-test >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support mmdebstrap arch-test >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then  # binfmt mounted after the install
  update-binfmts --enable qemu-aarch64
fi
if ! arch-test arm64 >/dev/null 2>&1; then
  echo "arm64 host: arch-test says this machine cannot run arm64 programs ($(arch-test arm64 2>&1 | tail -1))" >&2
  exit 1
fi
echo "arm64 host: qemu-aarch64 registered"

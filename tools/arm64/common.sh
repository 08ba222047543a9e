# Shared by the tools/arm64 scripts (sourced, not run). Paths are relative to the repository root.
ARM64_BUILD=${ARM64_BUILD:-build/arm64}
ARM64_ROOT=${ARM64_ROOT:-build/arm64-root}
ARM64_VENV=/opt/ranet-venv          # inside the root
ARM64_CERT=/etc/ranet-host-ca.crt   # the host's CA bundle, copied into the root for pip

# The one environment every command in the root gets: nothing of the host's leaks in (its PIP_*
# variables name host paths: find-links, certificates).
arm64_env=(env -i PATH=$ARM64_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
           HOME=/root LANG=C.UTF-8 PIP_CERT=$ARM64_CERT PIP_DISABLE_PIP_VERSION_CHECK=1
           PIP_DEFAULT_TIMEOUT=180 PYTHONDONTWRITEBYTECODE=1)

arm64_mounted=()

# Mount /proc and /dev in the root, and an empty folder over /sys/devices/system/cpu in case a
# /sys is there: ONNX Runtime's CPU detection reads the host's x86 entries there and crashes under
# qemu ("uncaught target signal 11"). /sys itself is never mounted. arm64_umount undoes it all;
# callers trap it on EXIT.
arm64_mount() {
  local root=$1
  mkdir -p "$root/proc" "$root/dev"
  mount -t proc proc "$root/proc" && arm64_mounted+=("$root/proc")
  mount --bind /dev "$root/dev" && arm64_mounted+=("$root/dev")
  if [ -d "$root/sys/devices/system/cpu" ]; then
    mount -t tmpfs -o size=1m,mode=0555 none "$root/sys/devices/system/cpu" && arm64_mounted+=("$root/sys/devices/system/cpu")
  fi
  cp /etc/resolv.conf "$root/etc/resolv.conf"
}

arm64_umount() {
  local i
  for ((i = ${#arm64_mounted[@]} - 1; i >= 0; i--)); do
    umount "${arm64_mounted[i]}" 2>/dev/null || umount -l "${arm64_mounted[i]}" || true
  done
  arm64_mounted=()
}

# Run a command in the root under the clean environment.
arm64_chroot() {
  local root=$1; shift
  chroot "$root" "${arm64_env[@]}" "$@"
}

# Unmount whatever a killed run left mounted under the root (before anything there is removed:
# rm -rf would otherwise walk into the host's /dev).
arm64_umount_stale() {
  local root target
  root=$(realpath -m "$1")
  { awk '{print $2}' /proc/mounts | grep -E "^$root(\.tmp)?/" || true; } | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target"
  done
}

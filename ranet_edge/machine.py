"""What the machine is: the CPU's name and the instruction sets ONNX Runtime kernels care
about (Linux /proc/cpuinfo, or sysctl on macOS), and an accelerator it shows (an NVIDIA
driver, an AMD ROCm device, Apple silicon), whatever onnxruntime can do with it.
Used by ``ranet-edge doctor`` and the benchmarks' reports; imports nothing heavy.
"""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
# Linux /proc/cpuinfo "Features" of arm64 -> the names people use
ARM_FEATURES = {"asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
                "sve": "sve", "sve2": "sve2", "sme": "sme"}
# macOS sysctl hw.optional keys -> the same names
DARWIN_FEATURES = {"hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
                   "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
                   "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme",
                   "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f",
                   "hw.optional.avx512vnni": "avx512_vnni"}


def cpu_info() -> tuple[str, list[str]]:
    """(CPU name, instruction sets present) from /proc/cpuinfo, or sysctl on macOS."""
    if sys.platform == "darwin":
        return _darwin_cpu()
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return platform.processor() or platform.machine(), []


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """Linux /proc/cpuinfo: x86 ``model name`` and ``flags``, arm64 ``Features``."""
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    present = [f for f in X86_FEATURES if f in flags]
    present += [label for flag, label in ARM_FEATURES.items() if flag in flags]
    return name or platform.processor() or platform.machine(), present


def _darwin_cpu() -> tuple[str, list[str]]:
    try:
        out = subprocess.run(["sysctl", "machdep.cpu.brand_string", "hw.optional"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.machine(), []
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    present = [name for key, name in DARWIN_FEATURES.items() if values.get(key, "0").strip() == "1"]
    return values.get("machdep.cpu.brand_string", platform.machine()).strip(), present


def gpu_hint() -> str | None:
    """An accelerator the machine shows, whatever onnxruntime can do with it."""
    nvidia = Path("/proc/driver/nvidia/version")
    if nvidia.exists():
        first = (nvidia.read_text(errors="replace").splitlines() or [""])[0]
        match = re.search(r"Kernel Module\s+(\S+)", first)
        return f"NVIDIA driver {match.group(1) if match else ''} (/proc/driver/nvidia/version)".replace("  ", " ")
    if Path("/dev/kfd").exists():
        return "AMD ROCm device (/dev/kfd)"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "Apple silicon (CoreML)"
    return None

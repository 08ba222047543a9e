"""What a host offers the GPU check: the onnxruntime build, its providers, the CUDA libraries
it found, TensorRT (and why not), the GPU itself. Nothing here installs anything."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROVIDER_LIBS = {"CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
                 "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so"}


def gpu() -> dict | None:
    """Name, driver and memory of GPU 0 from nvidia-smi (None when there is none)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, memory = [s.strip() for s in (out[0].split(",") + ["", ""])[:3]]
    return {"name": name, "driver": driver, "memory": memory, "count": len(out)}


def preload() -> dict:
    """``onnxruntime.preload_dlls()`` (onnxruntime-gpu >= 1.21): loads the CUDA and cuDNN
    libraries of the nvidia-* wheels installed beside it (a PyTorch environment's, say)."""
    fn = getattr(ort, "preload_dlls", None)
    if fn is None:
        return {"called": False, "reason": f"onnxruntime {ort.__version__} has no preload_dlls"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"called": False, "reason": "no CUDA provider in this onnxruntime build"}
    try:
        fn()
        return {"called": True, "error": None}
    except Exception as exc:  # noqa: BLE001 - reported, the library path may still do
        return {"called": True, "error": str(exc)[:300]}


def provider_probe(name: str) -> dict:
    """Is ``name`` listed, and does its shared library load? The loader's own message says
    which library is missing when it does not. (The provider libraries take their host
    symbols from libonnxruntime_providers_shared, which is loaded first, as onnxruntime does.)"""
    listed = name in ort.get_available_providers()
    out: dict = {"listed": listed, "library_loads": None, "reason": None}
    if not listed:
        out["reason"] = f"not in this onnxruntime build ({ort.__version__}, {Path(ort.__file__).parent})"
        return out
    if name not in PROVIDER_LIBS:
        return out
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / PROVIDER_LIBS[name]))
        out["library_loads"] = True
    except OSError as exc:
        out["library_loads"] = False
        out["reason"] = f"{PROVIDER_LIBS[name]} does not load: {str(exc)[:300]}"
    return out


def session_probe(model: Path, name: str) -> dict:
    """The last word: does a session on ``model`` really run on ``name``? (onnxruntime falls
    back to the CPU, with a log line, when a provider cannot be created.)"""
    try:
        sess = ort.InferenceSession(str(model), providers=list(dict.fromkeys([name, "CPUExecutionProvider"])))
    except Exception as exc:  # noqa: BLE001 - reported
        return {"runs": False, "reason": f"session creation failed: {str(exc)[:300]}"}
    got = sess.get_providers()
    return {"runs": got[0] == name, "session_providers": got,
            "reason": None if got[0] == name else f"onnxruntime fell back to {got[0]}"}


def tensorrt_reason(probe: dict) -> str | None:
    """None when TensorRT looks usable, else why not (its libraries are large and often absent)."""
    if probe["reason"]:
        return probe["reason"]
    for soname in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(soname)
            return None
        except OSError:
            continue
    return "libnvinfer.so.10 (TensorRT 10) is not on the library path; install the tensorrt-cu12/cu13 libs to use it"


def environment(provider: str) -> dict:
    providers = ort.get_available_providers()
    return {
        "python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "numpy": np.__version__, "onnxruntime": ort.__version__,
        "onnxruntime_path": str(Path(ort.__file__).parent), "device": ort.get_device(),
        "providers_available": providers, "provider_requested": provider, "gpu": gpu(),
        "ld_library_path": [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p],
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],  # CPU figures mean little if high
    }

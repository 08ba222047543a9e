"""The executor seam: what runs one graph of a bundle on a set of rows (see :mod:`.base`).

Three executors plug in: :class:`~.host.HostExecutor` (numpy arrays, any provider),
:class:`~.device.DeviceExecutor` (IOBinding, tensors stay in device memory) and
:class:`~.captured.CapturedExecutor` (buffers fixed per batch bucket, CUDA graphs).
``ExitChain.load`` picks one (``chain.executor``); the routing loop and the serving engine
drive it the same way. Importing this package imports nothing else: each name below loads its
module the first time it is used.
"""
from __future__ import annotations

from importlib import import_module

_WHERE = {"Env": ".base", "Executor": ".base", "HostExecutor": ".host", "DeviceExecutor": ".device",
          "CapturedExecutor": ".captured", "Buckets": ".buckets"}

__all__ = ["Buckets", "CapturedExecutor", "DeviceExecutor", "Env", "Executor", "HostExecutor"]


def __getattr__(name: str) -> object:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))

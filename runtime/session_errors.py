"""Why ONNX Runtime could not make a session on a graph, and what to do about it.

ONNX Runtime raises its own exception types with messages that carry a status code, the
path, a C++ source location and a function signature before the sentence that matters.
:func:`load_error` keeps that sentence (:func:`onnxruntime_said`) and picks the fix from the
cause: a file that is not a model or is damaged (re-export), an opset or IR version newer
than this onnxruntime reads (upgrade it, or re-export for an older one), memory (fewer
threads, a smaller ``max_batch``, another device), or the provider itself: a plugin, an
EPContext graph compiled for a provider the session lacks, a provider library that does not
load (``ranet-edge doctor``, install the plugin).
"""
from __future__ import annotations

import re

from ranet_edge.errors import BundleError, ProviderError, RanetEdgeError

CPU = "CPUExecutionProvider"

# "[ONNXRuntimeError] : 1 : FAIL : " (repeated when a provider wraps another status)
_STATUS = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_LOAD_FROM = re.compile(r"Load model from .*? failed:\s*")
# "/onnxruntime_src/onnxruntime/core/graph/model.cc:256 " before a C++ signature
_SOURCE = re.compile(r"(?:[\w./\\-]+)\.(?:cc|cpp|h|hpp|cu):\d+\s+")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_MEMORY = re.compile(r"out of memory|bad_alloc|bad allocation|failed to allocate|cannot allocate|"
                     r"available memory of \d+ is smaller|alloc_failed|allocation fail|insufficient memory|"
                     r"not enough memory|memoryerror", re.I)
_NEW_OPSET = re.compile(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", re.I | re.S)
_OLD_OPSET = re.compile(r"stamped with opset version (\d+) or above for opset domain '?([\w.]*)'?", re.I)
_IR = re.compile(r"Unsupported model IR version:\s*(\d+),\s*max supported IR version:\s*(\d+)", re.I)
_MISSING = re.compile(r"NO_SUCHFILE|File doesn.t exist", re.I)
_CORRUPT = re.compile(r"INVALID_PROTOBUF|Protobuf parsing failed|No graph was found|INVALID_GRAPH|invalid model|"
                      r"external data|ShapeInferenceError|Type Error", re.I)
_UNKNOWN_OP = re.compile(r"([\w.]*:?\w+)\((-?\d+)\) is not a registered function/op", re.I)
_KERNEL = re.compile(r"Could not find an implementation for (\S+?)\((\d+)\)", re.I)


def onnxruntime_said(exc: BaseException, limit: int = 240) -> str:
    """The first line of what ONNX Runtime said in ``exc``, trimmed: without its status
    prefix, the ``Load model from PATH failed:`` preamble, C++ source locations and the
    function signatures after them; at most ``limit`` characters."""
    text = _ANSI.sub("", str(exc)).strip()
    text = _LOAD_FROM.sub("", _STATUS.sub("", text))
    while (m := _SOURCE.search(text)) is not None:
        text = text[:m.start()] + _skip_signature(text[m.end():])
    line = next((x.strip() for x in text.splitlines() if x.strip()), "") or type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."


def _skip_signature(text: str) -> str:
    """``text`` without the C++ function signature it starts with (``void ns::f(args) const``),
    when it starts with one: everything up to the parenthesis that closes the first one."""
    head = re.match(r"[\w:<>,*&~\s]*?[\w>]\s*\(", text)
    if head is None or "." in head.group(0):
        return text
    depth = 0
    for i in range(head.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            rest = re.sub(r"^\s*(?:const\s*)?(?:noexcept\s*)?(?:override\s*)?", "", text[i + 1:])
            return rest
    return text


def _short(provider: str) -> str:
    from .providers import SHORT_NAMES

    return next((k for k, v in SHORT_NAMES.items() if v == provider), provider)


def _full(provider: str) -> str:
    from .providers import SHORT_NAMES

    return SHORT_NAMES.get(provider.lower(), provider) if provider else CPU


def load_error(path: str, exc: Exception, provider: str, bundle: str | None = None) -> RanetEdgeError:
    """The error to raise when ONNX Runtime cannot make a session on graph ``path`` of a
    bundle with ``provider`` (short or full name): one line that says what ONNX Runtime said
    and a fix that fits the cause. ``bundle`` (the bundle's directory) makes the ``ranet-edge
    doctor`` command it suggests one to copy.

    Returns (does not raise; the caller writes ``raise load_error(...) from exc``):
        :class:`~ranet_edge.errors.BundleError` for a graph file that is missing, damaged, not
        a model, or needs a newer onnxruntime (opset, IR version, an operator it lacks);
        :class:`~ranet_edge.errors.ProviderError` for the provider, its plugin or library, an
        EPContext graph compiled for a provider the session lacks, or a provider's device out
        of memory; :class:`~ranet_edge.errors.RanetEdgeError` itself for the host out of memory.
    """
    from ._ort import ort

    said = onnxruntime_said(exc)
    raw = str(exc)
    provider = _full(provider)
    short = _short(provider)
    on = f" on {provider}" if provider != CPU else ""
    head = f"ONNX Runtime cannot load graph {path}{on}: {said.rstrip('.')}"
    doctor = f"`ranet-edge doctor {bundle or 'BUNDLE'} --provider {short}`"
    version = getattr(ort, "__version__", "?")
    if isinstance(exc, MemoryError) or _MEMORY.search(raw):
        fix = ("free memory: load with fewer threads (--threads), a smaller max_batch, or on another device "
               "(--provider cpu, or a device with more memory)" if on else
               "free memory: load with fewer threads (--threads) and a smaller max_batch, close other programs, "
               "or run on a machine with more memory")
        cls = ProviderError if on else RanetEdgeError
        return cls(f"{head}; out of memory: {fix}")
    if _MISSING.search(raw):
        return BundleError(f"{head}; the bundle lacks this file: copy the bundle whole, or re-export it")
    if m := _NEW_OPSET.search(raw):
        opset, domain, top = m.groups()
        return BundleError(f"{head}; the graph uses opset {opset} of {domain}, and onnxruntime {version} reads up to "
                           f"opset {top}: upgrade onnxruntime to a release that supports opset {opset}, or re-export "
                           f"the bundle with `ranet-edge export --opset {top}` (or lower)")
    if m := _OLD_OPSET.search(raw):
        return BundleError(f"{head}; onnxruntime {version} needs opset {m.group(1)} or newer: re-export the bundle "
                           f"with `ranet-edge export --opset {m.group(1)}` (or higher)")
    if m := _IR.search(raw):
        ir, top = m.groups()
        return BundleError(f"{head}; the graph is ONNX IR version {ir}, and onnxruntime {version} reads up to IR "
                           f"version {top}: upgrade onnxruntime to a release that reads IR version {ir}, or re-export "
                           "the bundle with the onnx package that matches this onnxruntime")
    if (m := _KERNEL.search(raw)) and not on:  # with a provider: neither it nor the CPU has one (below)
        return BundleError(f"{head}; onnxruntime {version} has no CPU kernel for {m.group(1)} at opset {m.group(2)}: "
                           "upgrade onnxruntime, or re-export the bundle with a lower --opset")
    if "EPContext" in raw:
        owner = re.search(r"generated by '([^']+)'", raw)
        made_for = owner.group(1) if owner else "another provider"
        if made_for == provider:  # asked for, and still not in the session
            return ProviderError(f"{head}; the session was made without {provider}, which this graph is compiled "
                                 f"for: run {doctor} to see whether it loads here{_install(provider, 'reinstall')}")
        return ProviderError(f"{head}; this graph is compiled for {made_for}: load it with --provider "
                             f"{_short(made_for)} (run {doctor} to see whether that works here"
                             f"{_install(made_for, 'install')})")
    if m := _UNKNOWN_OP.search(raw):
        return BundleError(f"{head}; onnxruntime {version} does not know the operator {m.group(1)}: re-export the "
                           "bundle (ranet-edge graphs use standard ONNX operators), or upgrade onnxruntime")
    if _CORRUPT.search(raw):
        return BundleError(f"{head}; the file is not a valid ONNX model (damaged or truncated): re-export the "
                           "bundle, or copy it again")
    if on:  # the provider, its plugin or library, its options, or a kernel neither it nor the CPU has
        return ProviderError(f"{head}; run {doctor} to see what {provider} lacks here, check the provider options"
                             f"{_install(provider, 'reinstall')}, or use --provider cpu")
    return BundleError(f"{head}; run {doctor}; if it finds nothing wrong, re-export the bundle")


def _install(provider: str, verb: str) -> str:
    """``; install its plugin: pip install ...`` for a plugin provider, else nothing."""
    from .plugins import PLUGINS, install_hint

    return f"; {verb} its plugin: {install_hint(provider)}" if provider in PLUGINS else ""

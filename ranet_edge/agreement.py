"""The same bundle through two providers: do labels, exits and logits agree?

:func:`provider_agreement` loads ``bundle`` on ``provider`` and on ``reference`` (the CPU by
default) and runs both on the same images: the routed prediction (labels, exits) at an
operating point, and every exit's logits (anytime prediction). It is what the QNN HTP and
the OpenVINO tests check, and what ``benchmarks/provider_agreement.py`` records.

The reference ``"qdq"`` is no provider: :func:`qdq_run_all` runs the bundle's graph files
on the CPU provider with every graph optimisation off, so that each DequantizeLinear, float
operator and QuantizeLinear of a QDQ graph runs as written. That is what the graph means,
and what an NPU such as the QNN HTP implements. The CPU provider's fused int8 kernels
compute something else on x86 CPUs without VNNI: their uint8 x int8 products are added in
saturating int16 (``vpmaddubsw``), which moved the shipped QNN bundle's logits by up to 8
on such a CPU where the HTP stays within 0.5 of the QDQ graph
(docs/guides/npu-and-plugin-providers.md).

A tool above the runtime, like ``ranet-edge doctor``: nothing in ``ranet_edge.runtime``
needs it. ``convert --to qnn`` measures its conversion check with :func:`qdq_run_all` (the
graphs are for the HTP, not for the converting machine's CPU kernels).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .runtime._ort import ort
from .runtime.chain import ExitChain
from .runtime.decision import decide
from .runtime.manifest import load_manifest

#: ``reference`` for :func:`provider_agreement`: the QDQ graphs run as written (see :func:`qdq_run_all`).
QDQ_REFERENCE = "qdq"
#: How the results name that reference.
QDQ_REFERENCE_NAME = "QDQ graphs in float (CPUExecutionProvider, graph optimisations off)"


def qdq_run_all(bundle: str | os.PathLike, x: np.ndarray) -> list[np.ndarray]:
    """Every exit's logits for the preprocessed float32 batch ``x``, from the bundle's graph
    files (never their compiled forms) on the CPU provider with every graph optimisation off:
    no QDQ fusion, so each DequantizeLinear -> float operator -> QuantizeLinear runs as the
    graph writes it. A static-batch bundle runs in chunks of its batch, the last one padded.

    Raises:
        BundleError: a manifest, file or sha256 that does not check (see ``load_manifest``).
    """
    man = load_manifest(bundle, verify=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sessions = [ort.InferenceSession(str(man.root / g.path), so, providers=["CPUExecutionProvider"])
                for g in man.graphs]
    step = man.batch_size or len(x)
    parts = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if n < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        env = {man.input_name: chunk}
        logits = []
        for g, sess in zip(man.graphs, sessions):
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: env[k] for k in g.inputs})))
            env.update(outs)
            logits += [outs[name][:n] for name in g.logits]
        parts.append(logits)
    return [np.concatenate(col) for col in zip(*parts)]


def _route(logits: list[np.ndarray], thresholds: np.ndarray, temperatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, exits) of the early-exit rule (runtime/decision.py) applied to every exit's logits."""
    n = len(logits[0])
    labels, exits, alive = np.zeros(n, np.int64), np.full(n, -1, np.int64), np.ones(n, bool)
    for k, z in enumerate(logits):
        d = decide(z, thresholds[k], temperatures[k], alive)
        labels[d.take], exits[d.take] = d.labels, k
        alive &= ~d.take
    return labels, exits


def provider_agreement(bundle: str | os.PathLike, images: np.ndarray, provider: str, reference: str = "cpu",
                       thresholds: Any = None, provider_options: dict | None = None) -> dict[str, Any]:
    """Agreement of ``provider`` with ``reference`` (a provider, or :data:`QDQ_REFERENCE`) on
    uint8 HxWx3 ``images``: shares of equal labels and exits of the routed prediction, and
    per exit the share of equal top-1 labels and the largest and mean absolute logit
    difference. Also the node placement of ``provider`` per graph and the seconds each took.

    Raises:
        RanetEdgeError: either chain cannot be loaded (see ``ExitChain.load``), or ``images``
            are not uint8 HxWx3 images of the bundle's input size.
    """
    run = ExitChain.load(bundle, provider=provider, warmup=False, provider_options=provider_options)
    x = run.preprocess(list(images))
    timing = {}
    t = time.perf_counter()
    if reference == QDQ_REFERENCE:
        la = qdq_run_all(bundle, x)
        (labels_a, exits_a), ref_name = _route(la, *run.resolve_thresholds(thresholds)), QDQ_REFERENCE_NAME
    else:
        ref = ExitChain.load(bundle, provider=reference, warmup=False)
        pa, la = ref.predict(x, thresholds), ref.run_all(x)
        labels_a, exits_a, ref_name = pa.labels, pa.exits, ref.session_providers[0][0]
    timing["reference"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    pb, lb = run.predict(x, thresholds), run.run_all(x)
    timing["provider"] = round(time.perf_counter() - t, 3)
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)) for a, b in zip(la, lb, strict=True)]
    return {
        "bundle": str(bundle), "provider": run.session_providers[0][0], "reference": ref_name,
        "images": int(len(x)),
        "labels_agree": float((labels_a == pb.labels).mean()),
        "exits_agree": float((exits_a == pb.exits).mean()),
        "mean_exit": [float(exits_a.mean()), float(pb.exits.mean())],
        "top1_agree_per_exit": [float((a.argmax(1) == b.argmax(1)).mean()) for a, b in zip(la, lb)],
        "max_abs_logit_diff": [float(d.max()) for d in diffs],
        "mean_abs_logit_diff": [float(d.mean()) for d in diffs],
        "logit_range": [float(np.abs(a).max()) for a in la],
        "placement": run.placement,
        "seconds": timing,
    }

"""The same bundle through two providers: do labels, exits and logits agree?

:func:`provider_agreement` loads ``bundle`` on ``provider`` and on ``reference`` (the CPU by
default) and runs both on the same images: the routed prediction (labels, exits) at an
operating point, and every exit's logits (anytime prediction). It is what the QNN HTP and
the OpenVINO tests check, and what ``benchmarks/provider_agreement.py`` records.

A tool above the runtime, like ``ranet-edge doctor``: nothing in ``ranet_edge.runtime`` or
``convert`` needs it to run (``convert`` measures its own agreement, fp32 bundle against the
converted one, in export/convert.py).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .runtime.chain import ExitChain


def provider_agreement(bundle: str | os.PathLike, images: np.ndarray, provider: str, reference: str = "cpu",
                       thresholds: Any = None, provider_options: dict | None = None) -> dict[str, Any]:
    """Agreement of ``provider`` with ``reference`` on uint8 HxWx3 ``images``: shares of
    equal labels and exits of the routed prediction, and per exit the share of equal
    top-1 labels and the largest and mean absolute logit difference. Also the node
    placement of ``provider`` per graph and the seconds each chain took.

    Raises:
        RanetEdgeError: either chain cannot be loaded (see ``ExitChain.load``), or ``images``
            are not uint8 HxWx3 images of the bundle's input size.
    """
    ref = ExitChain.load(bundle, provider=reference, warmup=False)
    run = ExitChain.load(bundle, provider=provider, warmup=False, provider_options=provider_options)
    x = ref.preprocess(list(images))
    timing = {}
    outs = {}
    for name, chain in (("reference", ref), ("provider", run)):
        t = time.perf_counter()
        outs[name] = (chain.predict(x, thresholds), chain.run_all(x))
        timing[name] = round(time.perf_counter() - t, 3)
    (pa, la), (pb, lb) = outs["reference"], outs["provider"]
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)) for a, b in zip(la, lb, strict=True)]
    return {
        "bundle": str(bundle), "provider": run.session_providers[0][0], "reference": ref.session_providers[0][0],
        "images": int(len(x)),
        "labels_agree": float((pa.labels == pb.labels).mean()),
        "exits_agree": float((pa.exits == pb.exits).mean()),
        "mean_exit": [float(pa.exits.mean()), float(pb.exits.mean())],
        "top1_agree_per_exit": [float((a.argmax(1) == b.argmax(1)).mean()) for a, b in zip(la, lb)],
        "max_abs_logit_diff": [float(d.max()) for d in diffs],
        "mean_abs_logit_diff": [float(d.mean()) for d in diffs],
        "logit_range": [float(np.abs(a).max()) for a in la],
        "placement": run.placement,
        "seconds": timing,
    }

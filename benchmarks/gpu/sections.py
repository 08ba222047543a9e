"""The sections of the GPU check that compare numbers: logits on the provider against the CPU,
fp16 against fp32, bucketed against unbucketed. Timing sections are in ``timing.py``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from seeded import SEEDED

from ranet_edge.runtime import ExitChain

#: Per-exit tolerances, max |logit difference| / max |reference logit|. fp32 leaves room for
#: TF32 convolutions (the CUDA provider's default on Ampere and later, ~1e-3 relative); fp16
#: bundles are compared with the same fp16 bundle on the CPU, whose kernels accumulate
#: differently.
TOLERANCE = {"fp32": 5e-3, "fp16": 3e-2}


@dataclass
class Ctx:
    """What every section needs: the provider, the shipped images, the bundles, the budget."""

    provider: str
    images: np.ndarray  # uint8 NHWC, the 500 shipped held-out CIFAR-10 images
    labels: np.ndarray
    bundles: dict[str, Path]  # every bundle found, the seeded ImageNet ones included
    quick: bool
    deadline: float
    batch: int = 64  # the batch of the batched figures
    max_batch: int = 256  # the largest batch measured; bucketed chains warm up to it
    cudnn_search: str | None = None  # the mode the other sections run with (None: provider default)
    started: float = 0.0  # perf_counter() when the check began
    missing: dict[str, str] = field(default_factory=dict)  # bundle -> why it is not there
    _x: np.ndarray | None = field(default=None, repr=False)
    _chains: dict = field(default_factory=dict, repr=False)

    @property
    def cifar(self) -> list[str]:
        """The bundles that read the shipped 32x32 CIFAR-10 images (every one but the seeded
        ImageNet bundles, which only the ``imagenet`` section runs, on their own inputs)."""
        return [name for name in self.bundles if name not in SEEDED]

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def on_cuda(self) -> bool:
        return self.provider in ("cuda", "tensorrt")

    def options(self, cudnn: str | None = None) -> dict | None:
        mode = cudnn or self.cudnn_search
        return {"cudnn_conv_algo_search": mode} if mode and self.provider == "cuda" else None

    def chain(self, name: str, buckets=None, device_io: bool = True, warmup: bool = True,
              cudnn: str | None = None, fresh: bool = False) -> ExitChain:
        """``name`` on the provider: device-resident caches, buckets up to ``max_batch`` unless
        told. Chains are shared between sections (each new session searches its convolution
        algorithms again, which on a GPU costs seconds per bucketed warm-up) unless ``fresh``."""
        spec = self.max_batch if buckets is None else buckets
        key = (name, str(spec), device_io, cudnn)
        if fresh or key not in self._chains:
            # unbucketed chains get the same max_batch (with buckets it is the largest bucket),
            # so both kinds see a batch of up to max_batch in one piece
            chain = ExitChain.load(self.bundles[name], provider=self.provider, device_io=device_io,
                                   buckets=spec, warmup=warmup, provider_options=self.options(cudnn),
                                   max_batch=self.max_batch if spec is False else None)
            if fresh:
                return chain
            self._chains[key] = chain
        return self._chains[key]

    def x(self, n: int | None = None) -> np.ndarray:
        """The shipped images preprocessed, as the :attr:`cifar` bundles read them."""
        if self._x is None:
            self._x = ExitChain.load(self.bundles["default"], warmup=False).preprocess(self.images)
        return self._x if n is None else self._x[np.resize(np.arange(len(self._x)), n)]


def precision(name: str) -> str:
    return "fp16" if name.endswith("fp16") else "fp32"


def _exit_diffs(ref: list[np.ndarray], got: list[np.ndarray]) -> list[dict]:
    out = []
    for a, b in zip(ref, got):
        diff = float(np.abs(a - b.astype(np.float32)).max())
        out.append({"max_abs": diff, "relative": diff / max(float(np.abs(a).max()), 1e-12),
                    "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean())})
    return out


def logits_vs_cpu(ctx: Ctx) -> dict:
    """Every exit's logits on the provider's device path against the CPU provider's host path,
    same bundle, ``ctx.batch`` shipped images."""
    x = ctx.x(ctx.batch)
    out = {}
    for name in ctx.cifar:
        ref = ExitChain.load(ctx.bundles[name], provider="cpu", device_io=False, buckets=False, warmup=False)
        dev = ctx.chain(name, warmup=False)
        tol = TOLERANCE[precision(name)]
        exits = _exit_diffs(ref.run_all(x), dev.run_all(x))
        out[name] = {"precision": precision(name), "tolerance": tol, "exits": exits,
                     "max_relative": max(e["relative"] for e in exits),
                     "ok": all(e["relative"] <= tol for e in exits),
                     "session_providers": dev.session_providers[0], "executor": dev.executor.kind,
                     "device": getattr(dev.executor, "device", "cpu")}
    return out


def fp16_accuracy(ctx: Ctx) -> dict:
    """Top-1 per exit of each fp16 bundle against its fp32 bundle, both on the provider's
    device path, on every shipped image (C-1's golden weights are untrained: agreement only)."""
    x, labels = ctx.x()[:ctx.n(500, 100)], ctx.labels[:ctx.n(500, 100)]
    out = {}
    for name in ("default", "c1"):
        if name not in ctx.bundles or f"{name}-fp16" not in ctx.bundles:
            continue
        a = _batched(ctx.chain(name, warmup=False), x)
        b = _batched(ctx.chain(f"{name}-fp16", warmup=False), x)
        rows = _exit_diffs(a, b)
        for row, la, lb in zip(rows, a, b):
            if name == "default":
                row["top1_fp32"] = float((la.argmax(1) == labels).mean())
                row["top1_fp16"] = float((lb.argmax(1) == labels).mean())
        out[name] = {"images": len(x), "exits": rows}
        if name == "default":
            out[name]["max_top1_drop"] = max(r["top1_fp32"] - r["top1_fp16"] for r in rows)
    return out


def _batched(chain: ExitChain, x: np.ndarray, batch: int = 250) -> list[np.ndarray]:
    parts = [chain.run_all(x[i:i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate(col) for col in zip(*parts)]


def compare_predictions(p, q) -> dict:
    """How far two predict() results on the same inputs are apart."""
    return {"exits_equal": float((p.exits == q.exits).mean()), "labels_equal": float((p.labels == q.labels).mean()),
            "max_probability_diff": float(np.abs(p.probabilities - q.probabilities).max()),
            "identical": bool(np.array_equal(p.exits, q.exits) and np.array_equal(p.probabilities, q.probabilities))}

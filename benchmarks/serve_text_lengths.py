"""Serving a text bundle: what batching rows only with rows of their own sequence length costs,
against a server that would pad every row to the longest (the stage engine in this process).

    python benchmarks/serve_text_lengths.py [--dim 128] [--requests 256] [--rounds 5]

The encoder is the tests' (``tests/text_models.py``, random weights, operating point ``mp``
of ``tests/text_serve_support.py``: samples leave at every exit). ``--requests`` one-sample
requests are sent at once to a ``StageEngine`` (max_batch 16), three ways, interleaved per
round: A every request of length 32; B lengths 8/16/24/32 at random (what the server does:
rows share graph runs with rows of their length only); C the texts of B padded to 32 by the
client with the mask (one length: what padding in the server would run). Prints the median
wall time of each over the rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402
from text_serve_support import store_points  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.serve.engine import ServedModel  # noqa: E402
from ranet_edge.serve.settings import ServeSettings  # noqa: E402
from ranet_edge.serve.stage_engine import StageEngine  # noqa: E402


def one(length: int, seed: int, pad: int | None = None) -> dict[str, np.ndarray]:
    x = {k: v.numpy() for k, v in text_batch(1, length, seed=seed).items()}
    return x if pad is None else {k: np.pad(v, ((0, 0), (0, pad - v.shape[1]))) for k, v in x.items()}


async def serve_all(model: ServedModel, xs: list[dict]) -> float:
    engine = StageEngine(model)
    await engine.start()
    t = time.perf_counter()
    await asyncio.gather(*[engine.classify(x, None) for x in xs])
    took = time.perf_counter() - t
    await engine.close(5)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_model(EarlyExitBert(dim=args.dim).eval(), bundle, text_batch(2, 12), ExportSpec(dynamic_axes=SEQUENCE),
                     log=lambda _m: None)
        store_points(bundle)
        model = ServedModel(ServeSettings(bundle=str(bundle), max_batch=16))
        lengths = np.random.default_rng(0).choice([8, 16, 24, 32], args.requests)
        ways = {"A one length (32)": [one(32, i) for i in range(args.requests)],
                "B four lengths, batched by length": [one(int(n), i) for i, n in enumerate(lengths)],
                "C four lengths, padded to 32": [one(int(n), i, 32) for i, n in enumerate(lengths)]}
        took: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.rounds):
            for k, xs in ways.items():
                took[k].append(asyncio.run(serve_all(model, xs)))
    for k, v in took.items():
        ms = float(np.median(v)) * 1e3
        print(f"{k}: {ms:.1f} ms for {args.requests} requests ({args.requests / ms * 1e3:.0f} requests/s)")


if __name__ == "__main__":
    main()

"""A BERT-like early-exit encoder: its chain (every exit, graph by graph) against its monolithic
graph, interleaved, at sequence 128, batch 1 and 32, at each hidden width asked for.

    python benchmarks/text_chain_overhead.py [--dims 256 128] [--heads 4] [--rounds 5] --out J

The encoder is the tests' (``tests/text_models.py``: int64 ids and mask, 6 post-norm layers,
exits after layers 2, 4 and 6 on the first token, feed-forward 2x the width, vocabulary
1000), random weights, exported with a dynamic sequence axis and ``--monolithic``; hidden
256 with 4 heads is the "BERT-like small" size, 128 the size where fixed costs weigh most.
The chain is ``ExitChain.run_all`` (its cached tensors, the extended additive mask among
them, stay in bound buffers between graphs: ``runtime/executors/host.py``). Both sides run with one intra-op thread and the same
session options; the ratio is the median over rounds of per-round ratios of medians, the
medians over the calls no other process preempted (``_common.interleaved``). With one thread
ONNX Runtime computes in the calling thread, so the ratio of the calling thread's CPU time is
reported too: on a shared machine it is the steadier figure.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import interleaved, median_ms, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.providers import session_options  # noqa: E402


def measure(bundle: Path, length: int, rounds: int) -> dict:
    chain = ExitChain.load(bundle, threads=1)
    ex = chain.executor
    mono = ort.InferenceSession(str(bundle / "monolithic.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    out: dict = {}
    for batch in (1, 32):
        x = {k: v.numpy() for k, v in text_batch(batch, length, vocab=1000, seed=batch).items()}
        fns = {"chain": lambda x=x: chain.run_all(x), "monolithic": lambda x=x: mono.run(None, x),
               # the chain as before bound plans took named inputs: numpy arrays between graphs
               "chain_unbound": lambda x=x: ex.run_every(ex.feed(chain.check_input(x)))}
        per_round, per_round_cpu = [], []
        for _ in range(rounds):
            pre: dict = {}
            cpu: dict = {}
            t = interleaved(fns, 100 if batch == 1 else 10, warmup=3, block=10 if batch == 1 else 2, settle=2,
                            cpu=cpu, preempted=pre)
            per_round.append({k: median_ms(v, pre[k]) for k, v in t.items()})
            per_round_cpu.append({k: median_ms(v, pre[k]) for k, v in cpu.items()})
        ratios = [r["chain"] / r["monolithic"] for r in per_round]
        cpu_ratios = [r["chain"] / r["monolithic"] for r in per_round_cpu]
        unbound = float(np.median([r["chain_unbound"] / r["monolithic"] for r in per_round_cpu]))
        med = {k: float(np.median([r[k] for r in per_round])) for k in fns}
        out[f"batch{batch}"] = {"median_ms": med, "chain_over_monolithic": float(np.median(ratios)),
                                "round_ratios": ratios, "cpu_chain_over_monolithic": float(np.median(cpu_ratios)),
                                "cpu_round_ratios": cpu_ratios, "cpu_unbound_chain_over_monolithic": unbound}
        print(f"sequence {length}, batch {batch:>2}: chain {med['chain']:.2f} ms, monolithic {med['monolithic']:.2f} ms,"
              f" chain/monolithic x{np.median(ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)}); "
              f"thread CPU time x{np.median(cpu_ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in cpu_ratios)}); "
              f"unbound chain x{unbound:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/text_chain_overhead.json")
    args = ap.parse_args()
    results = {}
    for dim in args.dims:
        model = EarlyExitBert(vocab=1000, dim=dim, heads=args.heads, max_len=args.length).eval()
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            export_model(model, bundle, text_batch(2, 16, vocab=1000), ExportSpec(dynamic_axes=SEQUENCE, monolithic=True),
                         log=lambda m: None)
            print(f"hidden {dim}, {args.heads} heads:")
            results[f"dim{dim}"] = measure(bundle, args.length, args.rounds)
    write(args.out, {"onnxruntime": ort.__version__, "threads": 1, "sequence": args.length, "heads": args.heads,
                     "layers": 6, "exits_after": [2, 4, 6], **results})


if __name__ == "__main__":
    main()

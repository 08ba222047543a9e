"""Full chain (every exit, stage by stage) against the monolithic graph, interleaved.

    python benchmarks/chain_overhead.py --bundle B [--threads 1,2] [--rounds 5] --out J

For each thread setting (spinning off, as the runtime's default) both sides get the same
session options. Each round times, side by side in settled blocks, ``ExitChain.run_all``
against the monolithic graph run two ways: ``session.run`` (how one runs a single graph)
and with its outputs pre-bound (IOBinding, what the chain's CPU path does for its graphs).
The ratios reported are medians over rounds of the per-round ratios of medians, the
medians taken over the calls that no other process preempted (``_common.interleaved``;
the share left out is reported). With one thread, the ratio of the calling thread's CPU
time is reported as well.
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from _common import held_out_images, interleaved, median_ms, write

from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.evaluation import cached_inputs
from ranet_edge.runtime.providers import session_options


def _bound_monolithic(sess: ort.InferenceSession, name: str, x: np.ndarray):
    io = sess.io_binding()
    outs = [np.empty((x.shape[0], *o.shape[1:]), np.float32) for o in sess.get_outputs()]
    values = [ort.OrtValue.ortvalue_from_numpy(o) for o in outs]
    for o, v in zip(sess.get_outputs(), values):
        io.bind_ortvalue_output(o.name, v)

    def run(keep=(outs, values)) -> list[np.ndarray]:
        io.bind_cpu_input(name, x)
        sess.run_with_iobinding(io)
        return [o.copy() for o in keep[0]]
    return run


def measure(bundle: str, threads: int, rounds: int, repeats: int) -> dict:
    chain = ExitChain.load(bundle, threads=threads)
    mono = ort.InferenceSession(str(chain.manifest.root / chain.manifest.monolithic.path),
                                session_options(threads), providers=["CPUExecutionProvider"])
    x_u8, _ = held_out_images(None, 0)
    out: dict = {}
    for batch in (1, 64):
        x = chain.preprocess(x_u8[:batch])
        feeds = cached_inputs(chain, x)
        graphs = chain.graphs
        fns = {
            "chain": lambda x=x: chain.run_all(x),
            "sessions_only": lambda gs=graphs, fs=feeds: [g.session.run(g.output_names, f) for g, f in zip(gs, fs)],
            "monolithic": lambda x=x: mono.run(None, {chain.input_name: x}),
            "monolithic_bound": _bound_monolithic(mono, chain.input_name, x),
        }
        per_round, per_round_cpu, skipped = [], [], []
        for _ in range(rounds):
            cpu: dict = {}
            pre: dict = {}
            t = interleaved(fns, repeats if batch == 1 else max(30, repeats // 10), block=100 if batch == 1 else 10,
                            settle=10 if batch == 1 else 2, cpu=cpu, preempted=pre)
            per_round.append({k: median_ms(v, pre[k]) for k, v in t.items()})
            per_round_cpu.append({k: median_ms(v, pre[k]) for k, v in cpu.items()})
            skipped.append({k: float(v.mean()) for k, v in pre.items()})
        med = {k: float(np.median([r[k] for r in per_round])) for k in fns}
        ratios = [r["chain"] / r["monolithic"] for r in per_round]
        strict = [r["chain"] / r["monolithic_bound"] for r in per_round]
        out[f"batch{batch}"] = {
            "median_ms": med, "overhead_ratio": float(np.median(ratios)), "round_ratios": ratios,
            "overhead_ratio_vs_bound": float(np.median(strict)), "round_ratios_vs_bound": strict,
            "preempted_share": {k: float(np.mean([r[k] for r in skipped])) for k in fns},
        }
        line = (f"threads {threads}, batch {batch:>2}: chain {med['chain']:.3f} ms, monolithic {med['monolithic']:.3f} ms "
                f"(bound {med['monolithic_bound']:.3f}), chain/monolithic x{np.median(ratios):.3f} "
                f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}), vs bound x{np.median(strict):.3f}")
        if threads == 1:  # ONNX Runtime computes in the calling thread: its CPU time is the work
            cpu_ratios = [r["chain"] / r["monolithic"] for r in per_round_cpu]
            cpu_strict = [r["chain"] / r["monolithic_bound"] for r in per_round_cpu]
            out[f"batch{batch}"].update(
                cpu_median_ms={k: float(np.median([r[k] for r in per_round_cpu])) for k in fns},
                cpu_overhead_ratio=float(np.median(cpu_ratios)), cpu_round_ratios=cpu_ratios,
                cpu_overhead_ratio_vs_bound=float(np.median(cpu_strict)))
            line += f"; thread CPU time x{np.median(cpu_ratios):.3f} (vs bound x{np.median(cpu_strict):.3f})"
        print(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (spinning off)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/chain_overhead.json")
    args = ap.parse_args()
    result: dict = {"onnxruntime": ort.__version__, "rounds": args.rounds, "spinning": False, "threads": {}}
    for t in (int(v) for v in args.threads.split(",")):
        result["threads"][str(t)] = measure(args.bundle, t, args.rounds, args.repeats)
    first = result["threads"][args.threads.split(",")[0]]
    result.update(first)  # the first thread setting at the top level, as before
    write(args.out, result)


if __name__ == "__main__":
    main()

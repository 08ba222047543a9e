"""The RANet paper's headline comparison, RANet against MSDNet, in FLOPs and in milliseconds.

Both bundles are run on the same held-out images: anytime prediction (each exit alone) and
budgeted batch classification (the paper's thresholds for p = 1/20 .. 39/20, fit on one half
of the images and evaluated on the other). FLOPs are the official counts (comparable with
the papers); milliseconds are real timed chain runs at batch 1 on this CPU, the two models
alternating operating point by operating point so that machine drift hits both alike.

    python benchmarks/ranet_vs_msdnet.py --ranet benchmarks/comparison/ranet.bundle \\
        --msdnet benchmarks/comparison/msdnet.bundle --data build/data/cifar10/train --holdout 5000
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import held_out_images, write

from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.evaluation import PAPER_P, anytime, budgeted, collect, measure_latency

NAMES = ("RANet", "MSDNet")


def best_within(rows: list[dict], key: str, budget: float) -> dict | None:
    """The most accurate operating point whose ``key`` is within ``budget``."""
    ok = [r for r in rows if r[key] <= budget]
    return max(ok, key=lambda r: r["accuracy"]) if ok else None


def exit_latencies(chains: dict[str, ExitChain], x: np.ndarray, rounds: int = 5) -> dict[str, list[float]]:
    """p50 ms to each exit at batch 1, the models measured in alternating rounds."""
    per: dict[str, list[list[float]]] = {k: [] for k in chains}
    for _ in range(rounds):
        for name, chain in chains.items():
            per[name].append(measure_latency(chain, x, repeats=200).exit_ms())
    return {k: np.median(np.asarray(v), axis=0).tolist() for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranet", required=True, help="RANet bundle")
    ap.add_argument("--msdnet", required=True, help="MSDNet bundle")
    ap.add_argument("--data", default=None, help="training images (the held-out split is used)")
    ap.add_argument("--holdout", type=int, default=5000, help="the training runs' --val-size")
    ap.add_argument("--budgets", default="4,6,9", help="MFLOPs budgets for the table")
    ap.add_argument("--ms-budgets", default="0.25,0.4,0.6", help="ms-per-image budgets for the table")
    ap.add_argument("--every", type=int, default=2, help="use every n-th p of the paper's 39")
    ap.add_argument("--json", default="benchmarks/results/ranet_vs_msdnet.json")
    ap.add_argument("--png", default="benchmarks/results/ranet_vs_msdnet.png")
    args = ap.parse_args()

    images, labels = held_out_images(args.data, args.holdout)
    perm = np.random.default_rng([0, 1]).permutation(len(images))
    val_idx, eval_idx = np.sort(perm[: len(images) // 2]), np.sort(perm[len(images) // 2:])
    chains = {"RANet": ExitChain.load(args.ranet, threads=1), "MSDNet": ExitChain.load(args.msdnet, threads=1)}
    ms = exit_latencies(chains, chains["RANet"].preprocess(images[:1]))
    report: dict = {"val_images": len(val_idx), "eval_images": len(eval_idx), "models": {}}
    outs = {}
    for name, chain in chains.items():
        val = collect(chain, images[val_idx], labels[val_idx])
        test = collect(chain, images[eval_idx], labels[eval_idx])
        outs[name] = val
        flops = chain.manifest.exit_costs("flops")
        report["models"][name] = {
            "bundle": args.ranet if name == "RANet" else args.msdnet,
            "official_flags": (chain.manifest.model or {}).get("official_flags"),
            "flops": flops, "run_flops": chain.manifest.exit_costs("run_flops"),
            "anytime": anytime(test, flops, ms[name]), "budgeted": [],
        }
    for p in PAPER_P[:: args.every]:
        for name, chain in chains.items():
            rows = budgeted(chain, outs[name], images[eval_idx], labels[eval_idx], chain.manifest.exit_costs("flops"),
                            ps=[p], run_costs=chain.manifest.exit_costs("run_flops"))
            report["models"][name]["budgeted"].extend(rows)

    table = []
    for b_flops, b_ms in zip((float(v) for v in args.budgets.split(",")),
                             (float(v) for v in args.ms_budgets.split(",")), strict=True):
        row = {"budget_mflops": b_flops, "budget_ms": b_ms}
        for name in NAMES:
            rows = report["models"][name]["budgeted"]
            by_flops = best_within(rows, "expected_flops", b_flops * 1e6)
            by_ms = best_within(rows, "measured_ms", b_ms)
            row[name] = {"acc_at_flops": by_flops and by_flops["accuracy"], "acc_at_ms": by_ms and by_ms["accuracy"]}
        table.append(row)
    report["table"] = table
    report["latency_note"] = "ms: p50 per image at batch 1, 1 intra-op thread, both models alternating"
    write(args.json, report)
    print_report(report)
    plot(report, args.png)


def _pct(v: float | None) -> str:
    return "  --  " if v is None else f"{100 * v:6.2f}"


def print_report(report: dict) -> None:
    for name in NAMES:
        m = report["models"][name]
        print(f"{name}: {m['official_flags']}")
        print("  exit  top-1   MFLOPs(official)  MFLOPs(paid)   ms")
        for r, paid in zip(m["anytime"], m["run_flops"]):
            print(f"  {r['exit']:>4} {100 * r['top1']:6.2f} {r['flops'] / 1e6:17.2f} {paid / 1e6:13.2f} {r['ms']:6.3f}")
    print("budgeted batch: best accuracy within the budget (eval half of the held-out images)")
    print(f"{'MFLOPs':>7} {'RANet':>7} {'MSDNet':>7} | {'ms':>6} {'RANet':>7} {'MSDNet':>7}")
    for row in report["table"]:
        print(f"{row['budget_mflops']:7.1f} {_pct(row['RANet']['acc_at_flops'])} {_pct(row['MSDNet']['acc_at_flops'])} | "
              f"{row['budget_ms']:6.3f} {_pct(row['RANet']['acc_at_ms'])} {_pct(row['MSDNet']['acc_at_ms'])}")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, color in zip(NAMES, ("tab:red", "tab:blue")):
        m = report["models"][name]
        for ax, key_a, key_b, scale in ((axes[0], "flops", "expected_flops", 1e-6), (axes[1], "ms", "measured_ms", 1.0)):
            pts = sorted((r[key_b] * scale, 100 * r["accuracy"]) for r in m["budgeted"])
            ax.plot(*zip(*pts), "-o", ms=3, color=color, label=f"{name} budgeted batch")
            ax.plot([r[key_a] * scale for r in m["anytime"]], [100 * r["top1"] for r in m["anytime"]], "s",
                    color=color, alpha=0.6, label=f"{name} anytime (each exit)")
    axes[0].set_xlabel("MFLOPs per image (official count)")
    axes[1].set_xlabel("ms per image (measured, batch 1, 1 thread)")
    for ax in axes:
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"RANet vs MSDNet on {report['eval_images']} held-out CIFAR-10 images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

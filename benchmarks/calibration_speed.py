"""How long the paper's threshold procedure takes at ImageNet's validation size.

`ranet-edge calibrate` fits thresholds for up to 39 values of p on every run; this measures
one `paper_thresholds` call on 8 exits x 50,000 samples (random confidences) for four
values of p, interleaved in settled blocks (benchmarks/_common.py).

    python benchmarks/calibration_speed.py [--out benchmarks/results/calibration_speed.json]
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import interleaved, median_ms, write

from ranet_edge.runtime.evaluation import calibration as cal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/calibration_speed.json")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    conf = rng.random((8, 50000))
    preempted: dict = {}
    times = interleaved({f"p={p}": (lambda p=p: cal.paper_thresholds(conf, p)) for p in (0.1, 0.5, 1.0, 1.9)},
                        args.repeats, warmup=2, block=5, settle=1, preempted=preempted)
    rows = {k: round(median_ms(v, preempted[k]), 3) for k, v in times.items()}
    for k, ms in rows.items():
        print(f"paper_thresholds 8 x 50000, {k}: {ms:.3f} ms")
    write(args.out, {"exits": 8, "samples": 50000, "median_ms": rows})


if __name__ == "__main__":
    main()

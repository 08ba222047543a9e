"""One bundle through a provider and through the CPU provider: labels, exits, logits.

    python benchmarks/provider_agreement.py --bundle ../ranet_edge/assets/qnn-bundle --provider qnn \
        --skip 256 --out results/qnn_agreement.json

Runs the routed prediction (default operating point) and every exit's logits on the sample
images after the first --skip (the shipped QNN bundle was calibrated on the first 256), on
--provider and on the CPU provider, and records ranet_edge/agreement.py's figures with the
provider's node placement per graph. The QNN HTP runs in simulation on x86_64 (slow: about
a third of a second per image and pass).
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import write

from ranet_edge.agreement import provider_agreement
from ranet_edge.assets import SAMPLE_IMAGES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--provider", required=True)
    ap.add_argument("--reference", default="cpu")
    ap.add_argument("--skip", type=int, default=256, help="leading sample images left out (calibration)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    x = np.load(SAMPLE_IMAGES)["x"][args.skip:]
    x = x[:args.limit] if args.limit else x
    r = provider_agreement(args.bundle, x, args.provider, args.reference)
    for key in ("labels_agree", "exits_agree", "top1_agree_per_exit", "max_abs_logit_diff", "mean_abs_logit_diff"):
        print(key, r[key])
    write(args.out, r)


if __name__ == "__main__":
    main()

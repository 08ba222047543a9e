"""The shipped default bundle on its 500 shipped sample images, on two machines (arm64 under
emulation and the x86_64 host): do they agree?

    python agreement.py predict OUT.npz          # on each machine, with ranet_edge installed
    python agreement.py compare ARM64.npz X86_64.npz --json OUT.json

``predict`` writes the preprocessed inputs, the routed prediction at the bundle's default
operating point (labels, exits, confidences) and every exit's logits. ``compare`` writes the
agreement as JSON (to a temporary file, then renamed) and exits 1, saying why, if any label or
exit differs or a difference passes the stated tolerance. Runs with numpy and ranet_edge only
(the arm64 root has nothing else).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # largest allowed |difference| of a confidence or a logit (float32, softmax in [0, 1])


def predict(out: Path) -> None:
    import onnxruntime as ort

    from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
    from ranet_edge.runtime import ExitChain

    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        images = z["x"]
    start = time.perf_counter()
    x = chain.preprocess(list(images))
    p = chain.predict(x)
    predict_s = time.perf_counter() - start
    logits = chain.run_all(x)
    thresholds, temperatures = chain.resolve_thresholds()
    meta = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "operating_point": chain.default_operating_point,
            "predict_s": round(predict_s, 2)}
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, x=x, labels=p.labels, exits=p.exits, confidences=p.confidences, thresholds=thresholds, temperatures=temperatures,
             logits=np.stack(logits), meta=json.dumps(meta))
    os.replace(tmp, out)
    print(f"agreement: {meta['machine']}: {len(x)} images predicted in {meta['predict_s']} s")


def compare(arm: Path, ref: Path, out: Path) -> int:
    a, b = np.load(arm), np.load(ref)
    ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    n = len(b["labels"])
    same_x = bool(a["x"].shape == b["x"].shape and (a["x"].view(np.uint32) == b["x"].view(np.uint32)).all())
    conf_diff = float(np.abs(a["confidences"] - b["confidences"]).max())
    logit_diff = [float(v) for v in np.abs(a["logits"] - b["logits"]).reshape(len(a["logits"]), -1).max(axis=1)]
    # how near a sample's confidence comes to a threshold it was compared with: a difference
    # this size could flip an exit (the last threshold, -inf, takes everyone)
    margin = nearest_threshold_margin(b["logits"], b["thresholds"], b["temperatures"], b["exits"])
    result = {
        "bundle": "ranet_edge/assets/default-bundle", "images": "ranet_edge/assets/cifar10-val-500.npz",
        "n": n, "operating_point": mb["operating_point"], "arm64": ma, "reference": mb,
        "inputs_bit_identical": same_x,
        "inputs_max_abs_diff": float(np.abs(a["x"] - b["x"]).max()),
        "labels_identical": int((a["labels"] == b["labels"]).sum()),
        "exits_identical": int((a["exits"] == b["exits"]).sum()),
        "exit_histogram": np.bincount(b["exits"], minlength=len(b["logits"])).tolist(),
        "confidence_max_abs_diff": conf_diff,
        "logits_max_abs_diff_per_exit": logit_diff,
        "top1_identical_per_exit": [int(v) for v in (a["logits"].argmax(-1) == b["logits"].argmax(-1)).sum(axis=1)],
        "nearest_confidence_to_threshold": margin,
        "tolerance": TOLERANCE,
    }
    problems = []
    if result["labels_identical"] != n:
        problems.append(f"{n - result['labels_identical']} of {n} labels differ")
    if result["exits_identical"] != n:
        problems.append(f"{n - result['exits_identical']} of {n} exits differ")
    if max([conf_diff, *logit_diff, result["inputs_max_abs_diff"]]) > TOLERANCE:
        problems.append(f"a difference passes {TOLERANCE} (confidences {conf_diff:.3g}, logits {max(logit_diff):.3g})")
    result["agree"] = not problems
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    summary = (f"{result['labels_identical']}/{n} labels and {result['exits_identical']}/{n} exits identical, "
               f"inputs {'bit-identical' if same_x else 'differ'}, confidences within {conf_diff:.2g}, "
               f"logits within {max(logit_diff):.2g}")
    if problems:
        print(f"agreement: arm64 and {mb['machine']} disagree: {'; '.join(problems)} ({out})", file=sys.stderr)
        return 1
    print(f"agreement: arm64 vs {mb['machine']}: {summary} ({out})")
    return 0


def nearest_threshold_margin(logits: np.ndarray, thresholds: np.ndarray, temperatures: np.ndarray,
                             exits: np.ndarray) -> float:
    """Smallest |confidence - threshold| over every (sample, exit) comparison the rule made."""
    z = logits.astype(np.float64) / temperatures.reshape(-1, 1, 1)
    z = z - z.max(axis=-1, keepdims=True)
    conf = (np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)).max(axis=-1)  # (exits, n)
    gaps = [np.abs(conf[k][exits >= k] - thresholds[k]) for k in range(len(thresholds) - 1)
            if np.isfinite(thresholds[k]) and (exits >= k).any()]
    return float(min(g.min() for g in gaps)) if gaps else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("predict").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("arm64", type=Path)
    c.add_argument("reference", type=Path)
    c.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "predict":
        predict(args.out)
        return 0
    return compare(args.arm64, args.reference, args.json)


if __name__ == "__main__":
    sys.exit(main())

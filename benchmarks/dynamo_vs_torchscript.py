"""``torch.onnx.export(dynamo=True)`` against the TorchScript exporter (``dynamo=False``, what
the exporter uses) on whole multi-exit models: what exports, node count, the logits against
PyTorch eager and against each other (bit-equal or not), ONNX Runtime time at batch 1.

    python benchmarks/dynamo_vs_torchscript.py [--out J]

Needs ``onnxscript`` for the dynamo path. Models: the shipped default RANet (its checkpoint),
an MSDNet (CIFAR-10, 5 exits, random weights) and the tests' BERT-like early-exit encoder
(int64 ids and mask, dynamic sequence axis). Each is exported with every exit's logits as an
output and a dynamic batch axis, at opset 18 for both paths (the dynamo exporter's lowest).
"""
from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from _common import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from text_models import EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.assets import DEFAULT_CHECKPOINT  # noqa: E402
from ranet_edge.checkpoint import load_checkpoint  # noqa: E402
from ranet_edge.model import build_model  # noqa: E402
from ranet_edge.msdnet_config import MSDNetConfig  # noqa: E402


def cases() -> dict:
    ranet = load_checkpoint(DEFAULT_CHECKPOINT).model.eval()
    msd = build_model(MSDNetConfig(nBlocks=5, step=2, base=4, nChannels=16)).eval()
    image = {"image": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    text = {k: v for k, v in text_batch(2, 16).items()}
    seq = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    return {"ranet_default": (ranet, image, {"image": {0: "batch"}}),
            "msdnet_cifar10_5exits": (msd, image, {"image": {0: "batch"}}),
            "bert_like_6layers": (EarlyExitBert().eval(), text, seq)}


def export(model, inputs: dict, axes: dict, dynamo: bool) -> tuple[onnx.ModelProto, float]:
    with torch.no_grad():
        k = len(model(*inputs.values()))
    names = [f"logits_{i}" for i in range(k)]
    buf = io.BytesIO()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs.values()), buf, dynamo=dynamo, input_names=list(inputs),
                          output_names=names, dynamic_axes={**axes, **{n: {0: "batch"} for n in names}},
                          opset_version=18, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue()), time.perf_counter() - t0


def run(m: onnx.ModelProto, feeds: dict, repeats: int = 30) -> tuple[list[np.ndarray], float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, feeds)
    one = {k: v[:1] for k, v in feeds.items()}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, one)
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/dynamo_vs_torchscript.json")
    args = ap.parse_args()
    result: dict = {"torch": torch.__version__, "onnxruntime": ort.__version__, "models": {}}
    for name, (model, inputs, axes) in cases().items():
        feeds = {k: v.numpy() for k, v in inputs.items()}
        with torch.no_grad():
            ref = [z.numpy() for z in model(*inputs.values())]
        row: dict = {}
        logits = {}
        for path, dynamo in (("torchscript", False), ("dynamo", True)):
            try:
                m, seconds = export(model, inputs, axes, dynamo)
                got, ms = run(m, feeds)
            except Exception as exc:  # what the exporter said, in one line
                row[path] = {"exported": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
                continue
            logits[path] = got
            rel = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref, strict=True))
            row[path] = {"exported": True, "export_s": round(seconds, 2), "nodes": len(m.graph.node),
                         "max_rel_diff_vs_eager": rel, "ort_ms_batch1": round(ms, 3)}
        if len(logits) == 2:
            row["logits_bit_equal"] = all(np.array_equal(a, b) for a, b in zip(logits["torchscript"], logits["dynamo"]))
            row["max_abs_diff_between"] = max(float(np.abs(a - b).max())
                                              for a, b in zip(logits["torchscript"], logits["dynamo"]))
        result["models"][name] = row
        print(name, row)
    write(args.out, result)


if __name__ == "__main__":
    main()

"""The models of issue 30 tried with the generic exporter: exported or refused (the one line),
the largest relative difference of the validation table, and chain / monolithic (``run_all``
against the monolithic graph, one thread, interleaved medians).

    python benchmarks/issue30_models.py [--out J]

The models are the tests' (``tests/text_models.py``, ``tests/test_export_refusals.py``,
``tests/test_fold_patterns.py``, ``tests/msdnet_toy.py``), random weights, small sizes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import interleaved, median_ms, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_export_refusals as bad  # noqa: E402
import test_fold_patterns as fp  # noqa: E402
from msdnet_toy import MSDNetToy  # noqa: E402
from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.errors import ExportError  # noqa: E402
from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.providers import session_options  # noqa: E402


def models() -> list[tuple[str, torch.nn.Module, object, ExportSpec, dict]]:
    image = (3, 16, 16)
    seq = ExportSpec(dynamic_axes=SEQUENCE, monolithic=True)
    resnet = fp.TwoExits([fp.BasicBlock(8, 8, 1), fp.BasicBlock(8, 16, 2)], 8)
    resnet.heads[1] = torch.nn.Linear(16, 5)
    run_x = {"image": np.random.default_rng(0).standard_normal((8, *image)).astype(np.float32)}
    bad.Moody.calls = 0
    return [
        ("BERT-like encoder, int64 ids + mask, exits after layers 2/4/6, sequence 128", EarlyExitBert(dim=64),
         text_batch(2, 16), seq, {k: v.numpy() for k, v in text_batch(8, 128, seed=3).items()}),
        ("ResNet-style blocks (torchvision BasicBlock), 2 exits", fp._randomize(resnet), image,
         ExportSpec(monolithic=True), run_x),
        ("MobileNet-style blocks (timm ConvNormAct, BatchNormAct2d, SE), 2 exits",
         fp._randomize(fp.TwoExits([fp.InvertedResidual(8), fp.InvertedResidual(8)], 8)), image,
         ExportSpec(monolithic=True), run_x),
        ("MSDNet-like toy, 3 scales, dense and stage-crossing skips", MSDNetToy().eval(), (3, 32, 32),
         ExportSpec(monolithic=True), {"image": np.random.default_rng(0).standard_normal((8, 3, 32, 32))
                                       .astype(np.float32)}),
        ("forward stops at the first confident exit", bad.FirstConfident().eval(), image, ExportSpec(), {}),
        ("another number of exits on a second input", bad.Moody().eval(), image, ExportSpec(), {}),
        ("adaptive_avg_pool2d sized from a tensor, dynamic batch", bad.PoolLikeOther().eval(), image, ExportSpec(),
         {}),
        ("  the same, static batch_size=2 (the fix named)", bad.PoolLikeOther().eval(), image,
         ExportSpec(batch_size=2, monolithic=True), {"image": run_x["image"][:2]}),
        ("hidden states handed on sequence-first", bad.SequenceFirst().eval(), {"ids": torch.randint(0, 20, (2, 5))},
         ExportSpec(dynamic_axes={"ids": {1: "sequence"}}), {}),
        ("wrong input_shape (4, 16, 16) for a 3-channel model", bad.FirstConfident().eval(), (4, 16, 16),
         ExportSpec(), {}),
        ("text model given an image shape", EarlyExitBert().eval(), (1, 12, 12), ExportSpec(), {}),
        ("train-mode model", fp._randomize(fp.TwoExits([fp.BasicBlock(8, 8, 1)], 8)).train(), image,
         ExportSpec(monolithic=True), run_x),
    ]


def chain_over_monolithic(bundle: Path, x: dict) -> float:
    chain = ExitChain.load(bundle, threads=1)
    mono = ort.InferenceSession(str(bundle / "monolithic.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    arg = x if len(x) > 1 else next(iter(x.values()))
    fns = {"chain": lambda: chain.run_all(arg), "monolithic": lambda: mono.run(None, x)}
    ratios = []
    for _ in range(3):
        pre: dict = {}
        t = interleaved(fns, 20, warmup=3, block=5, settle=1, preempted=pre)
        ratios.append(median_ms(t["chain"], pre["chain"]) / median_ms(t["monolithic"], pre["monolithic"]))
    return float(np.median(ratios))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/issue30_models.json")
    args = ap.parse_args()
    rows = []
    for name, model, inputs, spec, x in models():
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "b"
            try:
                result = export_model(model, bundle, inputs, spec, log=lambda m: None)
            except ExportError as exc:
                rows.append({"model": name, "exported": False, "message": str(exc).splitlines()[0]})
                print(f"{name}: refused: {rows[-1]['message'][:160]}")
                continue
            rel = max(r["max_rel_diff"] for r in result.table)
            ratio = chain_over_monolithic(bundle, x) if x else None
            rows.append({"model": name, "exported": True, "max_rel_diff": rel, "chain_over_monolithic": ratio,
                         "notes": result.warnings})
            shown = f"x{ratio:.3f}" if ratio else "-"
            print(f"{name}: exported, max rel diff {rel:.1e}, chain/monolithic {shown}")
    write(args.out, {"onnxruntime": ort.__version__, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()

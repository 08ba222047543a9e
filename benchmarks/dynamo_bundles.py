"""Bundles made by each ``torch.onnx.export`` path, through the project's own export
(``ExportSpec(exporter="torchscript" | "dynamo")``: fold, cut, rewrite, simplify, validation):
what exports, every exit's chained logits against PyTorch eager and against the other path
(bit-equal or not), the stage graphs' node count, the export's wall and CPU time, and the
chain's run time at batch 1 (``run_all``, every exit, one thread, the two chains' calls
alternated).

    python benchmarks/dynamo_bundles.py [--sweep-every K] [--only NAME ...] [--out J]

Needs ``onnxscript`` for the dynamo path. Models: the shipped default RANet (its checkpoint,
``export_checkpoint`` as ``ranet-edge export`` runs it), an MSDNet (CIFAR-10, 5 exits, random
weights), every K-th configuration of the official-configuration sweep (tests/sweep_support.py;
``--sweep-every 1``: all 66) and a small ViT with an exit after each of its 4 blocks (written
here). Both paths export at opset 18 (the dynamo path's lowest).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from _common import write
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sweep_support import CASES, make_checkpoint  # noqa: E402

from ranet_edge.assets import DEFAULT_CHECKPOINT  # noqa: E402
from ranet_edge.checkpoint import load_checkpoint  # noqa: E402
from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.export.ranet import export_loaded  # noqa: E402
from ranet_edge.model import build_model  # noqa: E402
from ranet_edge.msdnet_config import MSDNetConfig  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402

PATHS = ("torchscript", "dynamo")


class ExitViT(nn.Module):
    """A ViT (patch 4, width 64, 4 heads, 4 blocks) with a classifier on the class token after
    every block: the transformer of the measurement."""

    def __init__(self, classes: int = 10, width: int = 64, depth: int = 4, size: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // 4) ** 2 + 1, width) * 0.02)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(width, 4, 2 * width, 0.0, batch_first=True,
                                                               norm_first=True) for _ in range(depth))
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        out = []
        for block, head in zip(self.blocks, self.heads, strict=True):
            t = block(t)
            out.append(head(t[:, 0]))
        return out


Case = tuple[nn.Module, Callable[[Path, ExportSpec], object], int]  # model, export(out, spec), image size


def cases(sweep_every: int, tmp: Path) -> dict[str, Case]:
    out: dict[str, Case] = {}
    ranet = load_checkpoint(DEFAULT_CHECKPOINT)
    out["ranet_default"] = (ranet.model.eval(), _loaded(ranet, DEFAULT_CHECKPOINT), ranet.config.image_size)
    torch.manual_seed(0)
    msd = build_model(MSDNetConfig(nBlocks=5, step=2, base=4, nChannels=16)).eval()
    out["msdnet_cifar10_5exits"] = (msd, _plain(msd, 32), 32)
    for case in CASES[::sweep_every] if sweep_every else []:
        ckpt = tmp / f"{case.id}.pth"
        make_checkpoint(case, ckpt)
        loaded = load_checkpoint(ckpt, None)
        out[f"sweep/{case.id}"] = (loaded.model.eval(), _loaded(loaded, ckpt), loaded.config.image_size)
    torch.manual_seed(0)
    vit = ExitViT().eval()
    out["vit_4blocks_4exits"] = (vit, _plain(vit, 32), 32)
    return out


def _loaded(loaded, ckpt: Path) -> Callable[[Path, ExportSpec], object]:
    return lambda o, spec: export_loaded(loaded, o, spec, str(ckpt), log=lambda m: None)


def _plain(model: nn.Module, size: int) -> Callable[[Path, ExportSpec], object]:
    return lambda o, spec: export_model(model, o, (3, size, size), spec, log=lambda m: None)


def measure(model: nn.Module, export, size: int, path: str, out: Path, x: np.ndarray) -> tuple[dict, tuple | None]:
    spec = ExportSpec(opset=18, exporter=path, validate_batches=(2,))
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        export(out, spec)
    except Exception as exc:  # what the export said, in one line
        return {"exported": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}, None
    row = {"exported": True, "export_s": round(time.perf_counter() - wall, 2),
           "export_cpu_s": round(time.process_time() - cpu, 2),
           "nodes": sum(len(onnx.load(str(g)).graph.node) for g in sorted(out.glob("*.onnx")))}
    chain = ExitChain.load(out, threads=1)
    got = chain.run_all(x)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    row["max_rel_diff_vs_eager"] = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref, strict=True))
    return row, (chain, got)


def time_chains(chains: dict[str, ExitChain], x: np.ndarray, repeats: int = 40) -> dict[str, float]:
    """Median ms of ``run_all(x)`` per chain, the chains' calls alternated (a shared CPU's
    load then weighs on both alike)."""
    times: dict[str, list[float]] = {k: [] for k in chains}
    for _ in range(repeats):
        for k, chain in chains.items():
            t0 = time.perf_counter()
            chain.run_all(x)
            times[k].append(time.perf_counter() - t0)
    return {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep-every", type=int, default=6, help="every K-th sweep configuration (1: all 66, 0: none)")
    ap.add_argument("--only", nargs="*", help="only these model names")
    ap.add_argument("--out", default="benchmarks/results/dynamo_bundles.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict = {"torch": torch.__version__, "onnxruntime": ort.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, export, size) in cases(args.sweep_every, Path(tmp)).items():
            if args.only and name not in args.only:
                continue
            x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
            row: dict = {}
            logits, chains = {}, {}
            for path in PATHS:
                row[path], made = measure(model, export, size, path, Path(tmp) / name.replace("/", "_") / path, x)
                if made is not None:
                    chains[path], logits[path] = made
            for path, ms in time_chains(chains, x[:1]).items():
                row[path]["chain_ms_batch1"] = ms
            if len(logits) == 2:
                a, b = logits["torchscript"], logits["dynamo"]
                row["logits_bit_equal"] = all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
                row["max_abs_diff_between"] = max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))
            result["models"][name] = row
            print(name, row, flush=True)
    write(args.out, result)


if __name__ == "__main__":
    main()

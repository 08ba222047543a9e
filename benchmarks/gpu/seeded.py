"""ImageNet-size bundles with random weights that travel as a few hundred kilobytes.

The ImageNet RANet of the official flags (preset ``imagenet``: 8 exits, 2.83 GFLOPs) is 1 GB
of ONNX with its monolithic graph, the official ImageNet MSDNet (``msdnet-imagenet``) 0.2 GB:
far over what a device run may carry (64 MiB a call). Their weights are random, so they need
not travel: :func:`strip` (export extra) keeps every graph as a skeleton whose large float
initializers point at an external ``<graph>.weights`` file (ONNX external data) and records
each one's shape, mean and standard deviation with a seed in ``seeded.json``;
:func:`materialise` (numpy only) writes the ``.weights`` files from those, byte for byte the
same on every machine (numpy's PCG64 generator and float32 normals are platform-independent;
the recorded sha256 is checked), wherever the check runs.

Thresholds: :func:`set_thresholds` runs the chain on the CPU on :func:`images` (seeded normal
noise, 64 images) and sets thresholds so that each exit takes the same share (``n // K`` of
the images, the paper's procedure with ``p = 1``, each threshold halfway between two
samples) at per-exit temperatures that spread the confidences (:func:`spread_temperature`),
saved as the default operating point ``fixed-share``. On a GPU the
same images leave at about the same exits (TF32 convolutions move confidences near a
threshold); the check reports the exit counts it measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SEED_FILE = "seeded.json"
SEEDED = {"imagenet-ranet": "imagenet", "imagenet-msdnet": "msdnet-imagenet"}  # bundle -> preset
MIN_ELEMENTS = 4096  # float initializers at least this large are regenerated; smaller ones stay inline
ALIGN = 4096
IMAGES_SEED = 20261203
N_IMAGES = 64


def images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded input batch (standard normal noise, float32 NCHW), the same on every host."""
    return np.random.default_rng(IMAGES_SEED).standard_normal((N_IMAGES, *shape), dtype=np.float32)[
        np.resize(np.arange(N_IMAGES), n)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _graph_files(manifest: dict) -> list[str]:
    files = [g["path"] for g in manifest["graphs"]]
    if manifest.get("monolithic"):
        files.append(manifest["monolithic"]["path"])
    return files


def export_random(preset: str, out: Path, log: Callable[[str], None] = print) -> float:
    """Export ``preset`` with random weights (torch seed 0) and its monolithic graph; seconds."""
    import torch

    from ranet_edge.checkpoint import LoadedCheckpoint
    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_loaded
    from ranet_edge.model import build_model
    from ranet_edge.presets import get_preset

    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = get_preset(preset)
    model = build_model(config)
    recalibrate_bn(model, config.image_size)
    log(f"exporting {preset} (random weights) to {out}")
    export_loaded(LoadedCheckpoint(model, config, "ranet-edge", "preset", {}), out, ExportSpec(monolithic=True),
                  source=f"{preset}-random", force=True, log=lambda m: None)
    return time.perf_counter() - t0


def recalibrate_bn(model, size: int, batches: int = 2, batch: int = 8) -> None:
    """BatchNorm statistics from seeded noise (train-mode passes, cumulative averages), then
    eval mode: a randomly initialised network with identity statistics maps every image to
    about the same logits (confidences equal to 1e-5 across images, which no threshold can
    split and TF32 would shuffle); with its statistics set, its outputs depend on the image."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the passes
    g = torch.Generator().manual_seed(IMAGES_SEED + 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=g))
    model.eval()


def spread_temperature(logits: np.ndarray) -> float:
    """The softmax temperature (on a log grid) whose median confidence is closest to 0.5: a
    random network's later exits give confidences of 0.99999 and more, where float32 leaves
    no room between images for a threshold; at this temperature they spread out."""
    from ranet_edge.runtime.decision import confidence

    grid = np.geomspace(0.05, 2000, 80)
    med = np.array([np.median(confidence(logits, float(t))) for t in grid])
    return float(np.float32(grid[int(np.argmin(np.abs(med - 0.5)))]))


def fixed_share(conf: np.ndarray) -> np.ndarray:
    """Thresholds so that each exit but the last takes ``n // K`` of the samples left, each set
    halfway between the last sample taken and the next one (no sample sits at a threshold)."""
    k_exits, n = conf.shape
    count = n // k_exits
    thr = np.full(k_exits, np.inf)
    taken = np.zeros(n, bool)
    for k in range(k_exits - 1):
        left = np.sort(conf[k][~taken])[::-1]
        if 0 < count < len(left):
            thr[k] = float((np.float64(left[count - 1]) + np.float64(left[count])) / 2)
        taken |= conf[k] >= np.float32(thr[k])
    thr[-1] = -np.inf
    return thr


def strip(bundle: Path) -> dict:
    """Turn every graph of ``bundle`` into a skeleton (large float initializers as external
    data), write ``seeded.json`` and the skeletons' sha256 into the manifest; the record."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import set_external_data

    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    record: dict = {"format": "ranet-edge seeded weights 1", "generator": "numpy PCG64 standard_normal float32",
                    "graphs": {}}
    for gi, fname in enumerate(_graph_files(manifest)):
        model = onnx.load(str(bundle / fname))
        wname = f"{Path(fname).stem}.weights"
        offset, tensors = 0, []
        for ti, t in enumerate(model.graph.initializer):
            if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) or int(np.prod(t.dims)) < MIN_ELEMENTS:
                continue
            arr = numpy_helper.to_array(t)
            length = arr.nbytes
            tensors.append({"name": t.name, "shape": list(arr.shape), "dtype": str(arr.dtype), "offset": offset,
                            "length": length, "mean": float(arr.astype(np.float64).mean()),
                            "std": float(arr.astype(np.float64).std()), "seed": gi * 100003 + ti})
            t.ClearField("float_data")
            t.raw_data = b"\0"  # set_external_data wants the field; cleared right after
            set_external_data(t, location=wname, offset=offset, length=length)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            offset += -(-length // ALIGN) * ALIGN
        tmp = bundle / f".{fname}.tmp"
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, bundle / fname)
        record["graphs"][fname] = {"weights": wname, "bytes": offset, "tensors": tensors}
    _rehash(bundle, manifest)
    for rec in record["graphs"].values():  # the weights' sha256: materialise here once
        path = _write_weights(bundle, rec)
        rec["sha256"] = _sha256(path)
    (bundle / SEED_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _rehash(bundle: Path, manifest: dict) -> None:
    """Every sha256/bytes entry of the manifest that names a graph file, recomputed."""
    digests = {f: (_sha256(bundle / f), (bundle / f).stat().st_size) for f in _graph_files(manifest)}

    def fix(node):
        if isinstance(node, dict):
            name = node.get("path") or node.get("graph")
            if name in digests and "sha256" in node:
                node["sha256"] = digests[name][0]
                if "bytes" in node:
                    node["bytes"] = digests[name][1]
            for v in node.values():
                fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(manifest)
    tmp = bundle / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, bundle / "manifest.json")


def _write_weights(bundle: Path, rec: dict) -> Path:
    path = bundle / rec["weights"]
    tmp = bundle / f".{rec['weights']}.tmp"
    with open(tmp, "wb") as f:
        f.truncate(rec["bytes"])
        for t in rec["tensors"]:
            n = int(np.prod(t["shape"], dtype=np.int64))
            x = np.random.default_rng(t["seed"]).standard_normal(n, dtype=np.float32)
            x = (x * np.float32(t["std"]) + np.float32(t["mean"])).astype(t["dtype"])
            f.seek(t["offset"])
            f.write(x.tobytes())
    os.replace(tmp, path)
    return path


def is_seeded(bundle: Path) -> bool:
    return (bundle / SEED_FILE).is_file()


def materialise(bundle: Path, log: Callable[[str], None] = print) -> float:
    """Write the missing ``.weights`` files of a seeded bundle (numpy only); seconds taken.
    Raises ValueError when a written file's sha256 is not the recorded one."""
    t0 = time.perf_counter()
    record = json.loads((bundle / SEED_FILE).read_text())
    for rec in record["graphs"].values():
        path = bundle / rec["weights"]
        if path.is_file() and path.stat().st_size == rec["bytes"]:
            continue
        log(f"writing {path.name} ({rec['bytes'] / 1e6:.0f} MB of seeded weights)")
        path = _write_weights(bundle, rec)
        got = _sha256(path)
        if got != rec["sha256"]:
            path.unlink()
            raise ValueError(f"{path}: sha256 {got[:12]} is not the recorded {rec['sha256'][:12]}; "
                             "this numpy draws other random numbers: re-run prepare_bundles.py here")
    return time.perf_counter() - t0


def drop_weights(bundle: Path) -> None:
    """Remove the ``.weights`` files (what travels is the skeleton and seeded.json)."""
    for p in bundle.glob("*.weights"):
        p.unlink()


def set_thresholds(bundle: Path, log: Callable[[str], None] = print) -> dict:
    """Thresholds so that each exit takes the same share of :func:`images` (the paper's
    procedure with p = 1), on the CPU, saved as the default operating point ``fixed-share``."""
    from ranet_edge.runtime import ExitChain
    from ranet_edge.runtime.decision import confidence
    from ranet_edge.runtime.evaluation import exit_index
    from ranet_edge.runtime.operating_points import OperatingPoint, save_point

    chain = ExitChain.load(bundle, warmup=False)
    x = images(N_IMAGES, chain.input_shape)
    logits = [np.concatenate(col) for col in zip(*(chain.run_all(x[i:i + 16]) for i in range(0, len(x), 16)))]
    temps = [spread_temperature(z) for z in logits]
    conf = np.stack([confidence(z, t) for z, t in zip(logits, temps)])
    thr = fixed_share(conf)
    exits = exit_index(conf, thr)
    counts = np.bincount(exits, minlength=chain.num_exits)
    flops = np.asarray([e.flops for e in chain.manifest.exits], np.float64)
    point = OperatingPoint(tuple(float(t) for t in thr), "fixed share per exit on seeded noise (random weights)",
                           0.0, float(counts @ flops / counts.sum()), None,  # accuracy: none (random weights)
                           temperatures=tuple(temps))
    save_point(bundle, "fixed-share", point, default=True)
    log(f"{bundle.name}: thresholds for a fixed share per exit, exit counts on {N_IMAGES} images {counts.tolist()}")
    return {"exit_counts": counts.tolist(), "thresholds": thr.tolist(), "temperatures": temps}

"""The configurations of the official-configuration sweep (test_config_sweep.py and
test_config_sweep_cli.py), and what every one of them is put through: a checkpoint saved as
the official trainers save it, and the checks on its exported bundle. Import it after
``pytest.importorskip("torch")``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from msdnet_toy import randomize

from ranet_edge.architectures import ArchConfig, config_type
from ranet_edge.model import build_model

TOLERANCE = 1e-4  # max |diff| / max |logit| at every exit


@dataclass(frozen=True)
class Case:
    """One official configuration: ``arch`` and its official flags (as config fields);
    ``shown`` are the flags its test id names (the rest are the sweep's small widths)."""

    arch: str
    flags: dict = field(default_factory=dict)
    shown: tuple[str, ...] = ()

    @property
    def config(self) -> ArchConfig:
        return config_type(self.arch)(**self.flags)

    @property
    def id(self) -> str:
        short = {"nBlocks": "b", "step": "step", "base": "base", "prune": "prune-", "block_step": "bs",
                 "compress_factor": "cf", "reduction": "red", "scale_list": "sl", "grFactor": "gr",
                 "bnFactor": "bn"}
        parts = [self.arch, str(self.flags["data"])]
        for key in self.shown:
            value = self.flags[key]
            if key == "bottleneck":
                parts.append("bottleneck" if value else "nobottleneck")
            elif key == "stepmode":
                parts.append(value)
            elif isinstance(value, tuple):
                parts.append(f"{short.get(key, key)}{'-'.join(map(str, value))}")
            else:
                parts.append(f"{short.get(key, key)}{value}")
        return "-".join(parts)


def msd(data: str = "cifar10", **flags) -> Case:
    base = {"nChannels": 4, "growthRate": 4}
    if data == "ImageNet":  # the authors' four ImageNet scales
        base.update(grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4))
    return Case("msdnet", {"data": data, **base, **flags}, tuple(flags))


def ran(data: str = "cifar10", **flags) -> Case:
    return Case("ranet", {"data": data, "nChannels": 4, "growthRate": 4, **flags}, tuple(flags))


MSDNET = [
    # CIFAR-10: nBlocks 1..5, step 1..4, even / lin_grow, prune min / max, bottleneck on / off
    msd(nBlocks=1, base=1, step=1, stepmode="even", prune="max"),
    msd(nBlocks=1, base=4, step=1, stepmode="even", prune="max", bottleneck=False),
    msd(nBlocks=1, base=2, step=1, stepmode="even", prune="min"),
    msd(nBlocks=2, base=1, step=1, stepmode="even", prune="min"),
    msd(nBlocks=2, base=2, step=2, stepmode="lin_grow", prune="max"),
    msd(nBlocks=2, base=3, step=3, stepmode="even", prune="max", reduction=0.0),
    msd(nBlocks=3, base=1, step=1, stepmode="lin_grow", prune="min", bottleneck=False),
    msd(nBlocks=3, base=4, step=2, stepmode="even", prune="max"),
    msd(nBlocks=3, base=2, step=4, stepmode="lin_grow", prune="max"),
    msd(nBlocks=4, base=2, step=3, stepmode="even", prune="min"),
    msd(nBlocks=4, base=1, step=1, stepmode="lin_grow", prune="max", bottleneck=False),
    msd(nBlocks=5, base=4, step=2, stepmode="even", prune="max"),  # the golden b5 flags, narrower
    msd(nBlocks=5, base=1, step=1, stepmode="lin_grow", prune="max"),  # the authors' CIFAR anytime flags
    msd(nBlocks=5, base=1, step=4, stepmode="even", prune="min", bottleneck=False),
    msd(nBlocks=4, base=4, step=2, stepmode="even", prune="max", reduction=0.3, growthRate=6),
    # CIFAR-100
    msd("cifar100", nBlocks=1, base=3, step=1, stepmode="even", prune="min", bottleneck=False),
    msd("cifar100", nBlocks=2, base=1, step=4, stepmode="even", prune="max"),
    msd("cifar100", nBlocks=2, base=2, step=1, stepmode="lin_grow", prune="min"),
    msd("cifar100", nBlocks=3, base=2, step=2, stepmode="even", prune="min", bottleneck=False),
    msd("cifar100", nBlocks=3, base=1, step=3, stepmode="lin_grow", prune="max"),
    msd("cifar100", nBlocks=4, base=4, step=1, stepmode="even", prune="max"),
    msd("cifar100", nBlocks=4, base=2, step=2, stepmode="lin_grow", prune="min"),
    msd("cifar100", nBlocks=5, base=2, step=3, stepmode="even", prune="max", bottleneck=False),
    msd("cifar100", nBlocks=5, base=1, step=1, stepmode="lin_grow", prune="min"),
    msd("cifar100", nBlocks=5, base=4, step=2, stepmode="even", prune="max", bnFactor=(1, 1, 2)),
    msd("cifar100", nBlocks=3, base=2, step=2, stepmode="even", prune="max", grFactor=(1, 2, 2), bnFactor=(1, 2, 2)),
    # ImageNet: four scales (at 224 px three scales leave the classifiers 14 px maps, which
    # the official forward cannot run: see test_unrunnable_configurations_are_refused_in_one_line)
    msd("ImageNet", nBlocks=1, base=1, step=1, stepmode="even", prune="max"),
    msd("ImageNet", nBlocks=1, base=4, step=1, stepmode="even", prune="min", bottleneck=False),
    msd("ImageNet", nBlocks=2, base=1, step=1, stepmode="even", prune="max"),
    msd("ImageNet", nBlocks=2, base=2, step=2, stepmode="lin_grow", prune="min"),
    msd("ImageNet", nBlocks=2, base=4, step=4, stepmode="even", prune="max", bottleneck=False),
    msd("ImageNet", nBlocks=3, base=1, step=1, stepmode="even", prune="max"),
    msd("ImageNet", nBlocks=3, base=2, step=2, stepmode="even", prune="max"),
    msd("ImageNet", nBlocks=3, base=2, step=1, stepmode="lin_grow", prune="min"),
    msd("ImageNet", nBlocks=4, base=2, step=1, stepmode="even", prune="max"),
    msd("ImageNet", nBlocks=4, base=1, step=2, stepmode="even", prune="min", bottleneck=False),
    msd("ImageNet", nBlocks=5, base=4, step=4, stepmode="even", prune="max"),  # the authors' ImageNet flags
    msd("ImageNet", nBlocks=5, base=1, step=1, stepmode="lin_grow", prune="max"),
    msd("ImageNet", nBlocks=1, base=2, step=1, stepmode="even", prune="max", grFactor=(1, 2, 2, 4),
        bnFactor=(1, 2, 2, 4)),
    msd("ImageNet", nBlocks=2, base=1, step=3, stepmode="even", prune="min", grFactor=(1, 1, 2, 4),
        bnFactor=(1, 1, 2, 2)),
    msd("ImageNet", nBlocks=3, base=2, step=2, stepmode="lin_grow", prune="max", bottleneck=False),
    msd("ImageNet", nBlocks=4, base=3, step=1, stepmode="even", prune="max", bnFactor=(1, 1, 2, 2)),
    msd("ImageNet", nBlocks=5, base=1, step=2, stepmode="even", prune="min"),
    msd("ImageNet", nBlocks=5, base=2, step=1, stepmode="lin_grow", prune="max", bottleneck=False),
]

RANET = [
    # scale lists, block_step, stepmode even / lg, compress_factor
    ran(nBlocks=1, block_step=1, step=2, stepmode="even"),  # the tiny preset
    ran(nBlocks=2, block_step=2, step=2, stepmode="lg"),  # C-1 of the paper, narrower
    ran(nBlocks=2, block_step=2, step=2, stepmode="even", compress_factor=0.5),
    ran(nBlocks=1, block_step=0, step=2, stepmode="even"),
    ran(nBlocks=1, block_step=3, step=2, stepmode="lg"),
    ran(nBlocks=2, block_step=1, step=3, stepmode="even", compress_factor=0.5),
    ran(nBlocks=1, block_step=2, step=4, stepmode="lg", compress_factor=0.75),
    ran(nBlocks=3, block_step=1, step=2, stepmode="even", reduction=0.25),
    ran(nBlocks=1, block_step=3, step=3, stepmode="even"),
    ran(nBlocks=2, block_step=1, step=2, stepmode="even", scale_list=(1, 2, 2, 3), grFactor=(4, 2, 2, 1),
        bnFactor=(4, 2, 2, 1), compress_factor=0.5),
    ran(nBlocks=1, block_step=2, step=2, stepmode="lg", scale_list=(1, 2, 2, 3), grFactor=(4, 2, 2, 1),
        bnFactor=(4, 2, 2, 1)),
    ran(nBlocks=1, block_step=1, step=2, stepmode="even", scale_list=(1, 2, 3, 3), grFactor=(4, 2, 1, 1),
        bnFactor=(4, 2, 1, 1)),  # the 4-scale CIFAR preset, narrower
    ran(nBlocks=1, block_step=1, step=3, stepmode="lg", scale_list=(1, 2, 3, 3), grFactor=(4, 2, 1, 1),
        bnFactor=(4, 2, 1, 1), compress_factor=0.5),
    ran(nBlocks=1, block_step=1, step=2, stepmode="even", scale_list=(1, 2, 3, 3, 3), grFactor=(4, 2, 1, 1, 1),
        bnFactor=(4, 2, 1, 1, 1)),
    ran(nBlocks=2, block_step=0, step=2, stepmode="lg", scale_list=(1, 1, 2, 3), grFactor=(2, 2, 1, 1),
        bnFactor=(2, 2, 1, 1), compress_factor=0.75),
    ran("cifar100", nBlocks=2, block_step=2, step=2, stepmode="lg"),
    ran("cifar100", nBlocks=1, block_step=2, step=3, stepmode="even", compress_factor=0.5),
    ran("cifar100", nBlocks=2, block_step=0, step=2, stepmode="lg", compress_factor=0.75),
    ran("ImageNet", nBlocks=1, block_step=1, step=2, stepmode="even", scale_list=(1, 2, 3, 4),
        grFactor=(4, 2, 2, 1), bnFactor=(4, 2, 2, 1)),  # the imagenet-small golden flags, narrower
    ran("ImageNet", nBlocks=2, block_step=1, step=2, stepmode="lg", scale_list=(1, 2, 3, 4),
        grFactor=(4, 2, 2, 1), bnFactor=(4, 2, 2, 1), compress_factor=0.5),
    ran("ImageNet", nBlocks=1, block_step=2, step=2, stepmode="even", scale_list=(1, 2, 3, 4, 4),
        grFactor=(4, 2, 2, 1, 1), bnFactor=(4, 2, 2, 1, 1)),
    ran("ImageNet", nBlocks=1, block_step=1, step=3, stepmode="lg", scale_list=(1, 2, 2, 3, 4),
        grFactor=(4, 2, 2, 1, 1), bnFactor=(4, 2, 2, 1, 1)),
]

CASES = MSDNET + RANET


def save_official(model: torch.nn.Module, arch: str, path: Path) -> None:
    """What the official trainers write: the DataParallel state_dict and no flags."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 300, "arch": arch, "state_dict": state, "best_prec1": 0.0}, path)


def make_checkpoint(case: Case, path: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = randomize(build_model(case.config), seed, logit_scale=4.0)
    save_official(model, case.arch, path)
    return model


def chain_by_names(bundle: Path, manifest: dict, x: np.ndarray) -> list[np.ndarray]:
    """Run the bundle's graphs in order with onnxruntime alone, every tensor handed on by
    the name the manifest gives it; returns every exit's logits."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    values = {manifest["preprocessing"]["input"]: x}
    for g in manifest["graphs"]:
        sess = ort.InferenceSession(str(bundle / g["path"]), so, providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == g["inputs"]
        names = [o.name for o in sess.get_outputs()]
        assert set(g["logits"]) | set(g["cache_outputs"]) == set(names)
        values.update(zip(names, sess.run(names, {n: values[n] for n in g["inputs"]}), strict=True))
    return [values[e["logits"]] for e in manifest["exits"]]


def check_bundle(model: torch.nn.Module, bundle: Path, seed: int = 1) -> dict:
    """The checks every configuration passes; returns the manifest."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    size = model.config.image_size
    x = np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    got = chain_by_names(bundle, manifest, x)
    assert len(got) == len(want) == model.num_exits
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        rel = float(np.abs(g - w).max() / np.abs(w).max())
        assert rel <= TOLERANCE, f"exit {k}: max |diff| / max |logit| = {rel:.2e}"
    official = model.exit_costs()
    exits = manifest["exits"]
    assert [e["flops"] for e in exits] == [c.flops for c in official]
    assert [e["dead_flops"] for e in exits] == [c.dead_flops for c in official]
    assert all(e["run_flops"] <= e["flops"] for e in exits)
    # what the chain skips at the last exit is exactly the dead work
    assert exits[-1]["run_flops"] == exits[-1]["flops"] - exits[-1]["dead_flops"]
    return manifest

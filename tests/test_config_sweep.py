"""A sweep of official MSDNet and RANet configurations (issue 21, part 4).

Each configuration is built with our own classes (which equal the official code: see the
golden vectors in tests/data), randomly initialised at small widths, and saved as the
official trainers save it: ``{'epoch', 'arch', 'state_dict', 'best_prec1'}`` with the
``module.`` prefix of DataParallel and no architecture flags. Then, as a user would:

- it is inspected and exported without flags (the architecture is inferred from the
  state_dict);
- the exported graphs are chained by tensor names with onnxruntime alone, and every exit's
  logits agree with PyTorch within 1e-4 relative;
- each exit's manifest ``flops`` equals the model's own official count exactly, and
  ``run_flops`` (what the chain pays) never exceeds it; what the chain skips at the last
  exit is exactly the dead work the manifest records (``dead_flops``).

The library is called directly for most configurations (a subprocess each would take most
of the sweep's time in imports); :func:`test_cli_inspect_export_info` runs the CLI on a few.
No configuration needs flags: see docs/guides/official-configurations.md for the flags that
leave no trace in a state_dict and why that does not matter.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from msdnet_toy import randomize  # noqa: E402

from ranet_edge.architectures import ArchConfig, config_type  # noqa: E402
from ranet_edge.checkpoint import load_checkpoint  # noqa: E402
from ranet_edge.errors import ConfigError  # noqa: E402
from ranet_edge.export.exporter import ExportSpec  # noqa: E402
from ranet_edge.export.ranet import export_loaded  # noqa: E402
from ranet_edge.model import MSDNet as MSDNetModel  # noqa: E402
from ranet_edge.model import RANet as RANetModel  # noqa: E402
from ranet_edge.model import build_model  # noqa: E402

pytestmark = pytest.mark.slow

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


def untraced_flags(config: ArchConfig) -> set[str]:
    """Flags the state_dict shows no trace of, because every value builds the same model."""
    if config.arch != "msdnet":
        return set()
    out = set() if config.bottleneck else {"bnFactor"}
    if not any(spec.kind == "transition" for spec in config.plan()):
        out.add("reduction")
    if config.nBlocks <= 2:  # one block; or two, where lin_grow step s is even step s + 1
        out |= {"step", "stepmode"}
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_official_configuration_inspects_and_exports_without_flags(case, tmp_path):
    ckpt = tmp_path / "model_best.pth.tar"
    model = make_checkpoint(case, ckpt)
    loaded = load_checkpoint(ckpt, None)  # what `inspect` and `export` do without flags
    assert (loaded.layout, loaded.config_source) == ("official", "inferred")
    want, got = case.config.to_dict(), loaded.config.to_dict()
    assert {k for k in want if want[k] != got[k]} <= untraced_flags(case.config)
    if case.arch == "msdnet":
        assert loaded.config.steps == case.config.steps
    assert loaded.model.exit_costs() == model.exit_costs()
    result = export_loaded(loaded, tmp_path / "bundle", ExportSpec(validate_batches=(2,)), str(ckpt),
                           log=lambda _msg: None)
    manifest = check_bundle(model, result.out_dir)
    assert manifest["model"]["config_source"] == "inferred"


def test_the_sweep_covers_what_issue_21_asks():
    msd_configs = [c.config for c in MSDNET]
    assert len(MSDNET) >= 40 and len(RANET) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.data for c in msd_configs} == {"cifar10", "cifar100", "ImageNet"}
    assert {c.num_scales for c in msd_configs if c.is_imagenet} == {4}  # three cannot run: see below
    assert {c.num_scales for c in msd_configs if not c.is_imagenet} == {3}
    assert {c.nBlocks for c in msd_configs} >= {1, 2, 3, 4, 5}
    assert {c.step for c in msd_configs} >= {1, 2, 3, 4}
    assert {c.stepmode for c in msd_configs} == {"even", "lin_grow"}
    assert {c.prune for c in msd_configs} == {"min", "max"}
    assert {c.bottleneck for c in msd_configs} == {True, False}
    ran_configs = [c.config for c in RANET]
    assert len({c.scale_list for c in ran_configs}) >= 5
    assert {c.block_step for c in ran_configs} >= {0, 1, 2, 3}
    assert {c.stepmode for c in ran_configs} == {"even", "lg"}
    assert len({c.compress_factor for c in ran_configs}) >= 3


UNRUNNABLE = [  # the official constructors build them; the official forward fails on them
    (msd("ImageNet", nBlocks=3, base=2, step=2, grFactor=(1, 2, 4), bnFactor=(1, 2, 4)), "14px maps"),
    (msd(nBlocks=3, base=2, step=2, grFactor=(1, 2), bnFactor=(1, 2)), "16px maps"),
    (msd(nBlocks=3, base=2, step=2, grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4)), "4px maps"),
    (msd("ImageNet", nBlocks=1, base=1, prune="min"), "prune min with 1 dense layer"),
    (ran(step=2, scale_list=(1, 2, 2), grFactor=(4, 2, 2), bnFactor=(4, 2, 2)), "16px maps"),
    (ran("ImageNet", step=2), "14px maps"),
    # a second scale-1 sub-network down-samples at every fusion block (the official slice
    # nb[:i + 1][-(scale - 1):] is the whole list when scale is 1): 4 px maps at its exits
    (ran(nBlocks=2, block_step=1, step=2, scale_list=(1, 1, 2, 3), grFactor=(4, 4, 2, 1), bnFactor=(4, 4, 2, 1)),
     "the official forward cannot run"),
]


@pytest.mark.parametrize(("case", "match"), UNRUNNABLE, ids=[c.id for c, _ in UNRUNNABLE])
def test_unrunnable_configurations_are_refused_in_one_line(case, match, tmp_path, run):
    """The official constructor builds these (so a state_dict can exist and is recognised),
    but the official forward fails on them: loading one is a one-line error, exit code 2."""
    config = case.config  # a valid set of flags...
    with pytest.raises(ConfigError, match=match):
        build_model(config)  # ...that no model is built for
    with torch.device("meta"):  # the constructor alone, as the official code would build it
        state = (MSDNetModel if case.arch == "msdnet" else RANetModel)(config).state_dict()
    ckpt = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "arch": case.arch, "state_dict": {k: torch.zeros(v.shape) for k, v in state.items()}},
               ckpt)
    res = run("inspect", ckpt)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and match in res.output


CLI_CASES = [MSDNET[0], MSDNET[28], RANET[1]]  # dead work on CIFAR and ImageNet; a RANet


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_inspect_export_info(case, tmp_path, run):
    """The CLI, in process: inspect and export without flags, then info."""
    ckpt = tmp_path / "model_best.pth.tar"
    model = make_checkpoint(case, ckpt)
    official = model.exit_costs()
    res = run("inspect", ckpt, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["flops"] == [c.flops for c in official]
    assert report["dead_flops"] == [c.dead_flops for c in official]
    res = run("inspect", ckpt)
    assert res.exit_code == 0, res.output
    dead = official[-1].dead_flops
    notes = [line for line in res.output.splitlines() if line.startswith("dead work:")]
    assert len(notes) == (1 if dead else 0)
    out = tmp_path / "bundle"
    res = run("export", ckpt, "-o", out)
    assert res.exit_code == 0, res.output
    check_bundle(model, out)
    res = run("info", out)
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("dead work:")]
    assert len(notes) == (1 if dead else 0)
    if dead:
        assert f"{dead / 1e6:.2f} of the {official[-1].flops / 1e6:.2f} official MFLOPs" in notes[0]


def test_cli_subprocess_exports_dead_work(tmp_path):
    """The installed entry point, one real process each for export and info."""
    case = MSDNET[26]  # ImageNet, four scales, one block: three of its four scales are dead work
    ckpt = tmp_path / "model_best.pth.tar"
    model = make_checkpoint(case, ckpt)
    assert model.exit_costs()[-1].dead_flops > 0
    exe = [sys.executable, "-m", "ranet_edge.cli"]
    out = tmp_path / "bundle"
    res = subprocess.run([*exe, "export", str(ckpt), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    check_bundle(model, out)
    res = subprocess.run([*exe, "info", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sum(line.startswith("dead work:") for line in res.stdout.splitlines()) == 1

"""MSDNet: official checkpoints load key for key, golden logits and official counts, flags
inferred from shapes for flag sets beyond the golden ones, export without flags."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install

from ranet_edge.architectures import config_from_dict
from ranet_edge.checkpoint import infer_arch_config, load_checkpoint
from ranet_edge.errors import CheckpointError, ConfigError
from ranet_edge.model import MSDNet
from ranet_edge.msdnet_config import MSDNetConfig
from ranet_edge.presets import get_preset, list_presets

GOLDEN = ["msdnet-cifar10-b5", "msdnet-imagenet-small"]


def _official_keys(path) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    lines = path.read_text().splitlines()
    tokens = lines[0].split(":", 1)[1].split()
    flags = dict(zip((t[2:] for t in tokens[::2]), tokens[1::2], strict=True))
    keys = []
    for line in lines[1:]:
        if line.strip():
            key, shape = line.split("\t")
            keys.append((key, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())))
    return flags, keys


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_checkpoint_loads_without_flags_and_reproduces_logits(data_dir, name):
    loaded = load_checkpoint(data_dir / f"{name}.pth")
    assert loaded.config.arch == "msdnet" and loaded.config_source == "inferred"
    flags, keys = _official_keys(data_dir / f"{name}.keys.txt")
    # Every official flag recovered from the shapes alone.
    assert config_from_dict(flags, "msdnet") == loaded.config
    state = loaded.model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == keys
    golden = np.load(data_dir / f"{name}.npz")
    with torch.no_grad():
        outs = loaded.model(torch.from_numpy(golden["input"]))
    assert len(outs) == loaded.config.nBlocks
    for k, out in enumerate(outs):
        ref = golden[f"logits_{k}"]
        rel = np.abs(out.numpy() - ref).max() / np.abs(ref).max()
        assert rel <= 1e-5, (k, rel)
    costs = loaded.model.exit_costs()
    assert [c.flops for c in costs] == golden["flops"].tolist()
    assert [c.params for c in costs] == golden["params"].tolist()


# Flag sets the golden files do not cover: prune min, lin_grow, other bases and steps,
# CIFAR-100, no bottleneck, other reductions, bnFactor, two and four scales.
FLAG_SETS = {
    "prune-min": MSDNetConfig(nBlocks=4, base=3, step=2, nChannels=8, growthRate=4, prune="min"),
    "lin-grow": MSDNetConfig(nBlocks=4, base=1, stepmode="lin_grow", step=1, nChannels=8, growthRate=4),
    "lin-grow-step2": MSDNetConfig(nBlocks=3, base=2, stepmode="lin_grow", step=2, nChannels=8, growthRate=6),
    "cifar100": MSDNetConfig(data="cifar100", nBlocks=3, base=4, step=2, nChannels=12, growthRate=6),
    "no-bottleneck": MSDNetConfig(nBlocks=3, base=2, step=2, nChannels=8, growthRate=4, bottleneck=False),
    "reduction-0.3": MSDNetConfig(nBlocks=4, base=4, step=2, nChannels=10, growthRate=6, reduction=0.3),
    "no-transition": MSDNetConfig(nBlocks=3, base=2, step=2, nChannels=8, growthRate=4, reduction=0.0),
    "bn-2-2-4": MSDNetConfig(nBlocks=3, base=3, step=2, nChannels=16, growthRate=6, bnFactor=(2, 2, 4)),
    "two-scales": MSDNetConfig(nBlocks=3, base=2, step=2, nChannels=8, growthRate=4, grFactor=(1, 2),
                               bnFactor=(1, 2)),
    "imagenet-4scale-min": MSDNetConfig(data="ImageNet", nBlocks=2, base=2, step=2, nChannels=8, growthRate=8,
                                        grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4), prune="min"),
}


@pytest.mark.parametrize("config", [pytest.param(c, id=n) for n, c in FLAG_SETS.items()]
                         + [pytest.param(get_preset(n), id=n) for n in list_presets("msdnet")])
def test_flags_inferred_from_shapes(config):
    with torch.device("meta"):
        state = MSDNet(config).state_dict()
    inferred = infer_arch_config(state)
    assert inferred.arch == "msdnet"
    with torch.device("meta"):
        rebuilt = MSDNet(inferred).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in state.items()}
    # Flags that leave no trace in the weights: bnFactor without a bottleneck, reduction
    # with no transition; all others must come back exactly.
    invisible = set()
    if not config.bottleneck:
        invisible.add("bnFactor")
    if not any(s.kind == "transition" for s in config.plan()):
        invisible.add("reduction")
    if config.nBlocks <= 2:
        invisible |= {"step", "stepmode"}
    expected = {k: v for k, v in config.to_dict().items() if k not in invisible}
    got = {k: v for k, v in inferred.to_dict().items() if k not in invisible}
    assert got == expected


def test_grfactor_with_a_common_factor_is_recovered_up_to_it():
    """nChannels*grFactor and growthRate*grFactor are all the weights show: 4 x (2-4-4) and
    8 x (1-2-2) build the same tensors, so inference returns the reduced form."""
    config = MSDNetConfig(nBlocks=3, base=2, step=2, nChannels=4, growthRate=4, grFactor=(2, 4, 4),
                          bnFactor=(2, 4, 4))
    with torch.device("meta"):
        state = MSDNet(config).state_dict()
    inferred = infer_arch_config(state)
    assert inferred.grFactor == (1, 2, 2) and inferred.nChannels == 8 and inferred.growthRate == 8
    assert [inferred.nChannels * g for g in inferred.grFactor] == [config.nChannels * g for g in config.grFactor]


@pytest.mark.parametrize("name", list_presets("msdnet"))
def test_preset_round_trips(name):
    config = get_preset(name)
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    tokens = config.official_flags().split()
    flags = dict(zip((t[2:] for t in tokens[::2]), tokens[1::2], strict=True))
    assert MSDNetConfig.from_dict(flags) == config


@pytest.mark.parametrize("kwargs, match", [
    ({"stepmode": "lg"}, "lin_grow"),
    ({"prune": "mid"}, "prune"),
    ({"bottleneck": "maybe"}, "bottleneck"),
    ({"reduction": 1.5}, "reduction"),
    ({"grFactor": (1, 2), "bnFactor": (1, 2, 4)}, "same length"),
    ({"grFactor": (1, 2, 4, 4, 4), "bnFactor": (1, 2, 4, 4, 4)}, "too small"),
    ({"growthRate": 3, "grFactor": (1, 1, 1), "bnFactor": (1, 1, 1), "nBlocks": 2}, "odd"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MSDNetConfig(**kwargs)


def test_unknown_key_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: .*prune"):
        MSDNetConfig.from_dict({"scale_list": "1-2-3"})


@pytest.mark.slow
def test_cli_inspect_and_export_without_flags(run, data_dir, tmp_path):
    ckpt = data_dir / "msdnet-cifar10-b5.pth"
    res = run("inspect", ckpt, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    golden = np.load(data_dir / "msdnet-cifar10-b5.npz")
    assert report["config"]["arch"] == "msdnet" and report["flops"] == golden["flops"].tolist()

    out = tmp_path / "b5.bundle"
    res = run("export", ckpt, "-o", out)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "MSDNet"
    official = [e["flops"] for e in manifest["exits"]]
    paid = [e["run_flops"] for e in manifest["exits"]]
    assert official == golden["flops"].tolist()
    # The chain defers finer-scale work of block k to the stage that reads it.
    assert all(p <= o for p, o in zip(paid, official, strict=True)) and paid[-1] == official[-1]
    assert paid[0] < official[0]

    from ranet_edge.runtime import ExitChain

    chain = ExitChain.load(out, threads=1)
    logits = chain.run_all(golden["input"])
    for k, got in enumerate(logits):
        ref = golden[f"logits_{k}"]
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5


def test_cli_arch_override_and_foreign_flags(run, data_dir):
    ckpt = data_dir / "msdnet-cifar10-b5.pth"
    res = run("inspect", ckpt, "--arch", "ranet")
    assert res.exit_code == 2 and "not a RANet state_dict" in res.output
    res = run("inspect", ckpt, "--scale-list", "1-2-3", "--arch", "msdnet")
    assert res.exit_code == 2 and "--scale-list is not MSDNet" in res.output
    res = run("inspect", ckpt, "--preset", "cifar10-c1")
    assert res.exit_code == 2 and "holds a MSDNet" in res.output.replace("an MSDNet", "a MSDNet")
    res = run("inspect", ckpt, "--nBlocks", "5", "--base", "4", "--step", "2", "--nChannels", "16")
    assert res.exit_code == 0, res.output


def test_wrong_flags_name_the_mismatch(data_dir):
    with pytest.raises(CheckpointError, match="does not match the flags MSDNet"):
        load_checkpoint(data_dir / "msdnet-cifar10-b5.pth", MSDNetConfig(nBlocks=5, base=4, step=2), "flags")


@pytest.mark.slow
def test_train_recognises_an_official_msdnet_checkpoint_and_resumes_without_flags(tmp_path, data_dir):
    """``train --init`` takes the architecture from an official checkpoint's keys; ``--resume``
    with no flags takes it from last.pt; the result exports without flags."""
    from click.testing import CliRunner

    from ranet_edge.cli import get_cli

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 24))
    out = tmp_path / "run"
    args = ["train", "--data", str(npz), "--epochs", "1", "--batch-size", "8", "--val-size", "8",
            "--max-batches", "1", "--out", str(out), "--init", str(data_dir / "msdnet-cifar10-b5.pth")]
    res = CliRunner().invoke(get_cli(), args)
    assert res.exit_code == 0, res.output
    assert "--nBlocks 5 --nChannels 16 --base 4" in res.output
    loaded = load_checkpoint(out / "last.pt")
    assert loaded.config.arch == "msdnet" and loaded.config_source == "checkpoint"
    res = CliRunner().invoke(get_cli(), ["train", "--data", str(npz), "--epochs", "2", "--batch-size", "8",
                                         "--val-size", "8", "--max-batches", "1", "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and load_checkpoint(out / "last.pt").meta["epoch"] == 2

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
of the sweep's time in imports); test_config_sweep_cli.py runs the CLI on a few. The
configurations and the checks are in sweep_support.py.
No configuration needs flags: see docs/guides/official-configurations.md for the flags that
leave no trace in a state_dict and why that does not matter.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sweep_support import CASES, MSDNET, RANET, check_bundle, make_checkpoint, msd, ran

from ranet_edge.architectures import ArchConfig
from ranet_edge.checkpoint import load_checkpoint
from ranet_edge.errors import ConfigError
from ranet_edge.export.exporter import ExportSpec
from ranet_edge.export.ranet import export_loaded
from ranet_edge.model import MSDNet as MSDNetModel
from ranet_edge.model import RANet as RANetModel
from ranet_edge.model import build_model


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


@pytest.mark.slow
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

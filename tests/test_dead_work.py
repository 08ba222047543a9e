"""Dead work is not recomputation (issue 21, part 3).

An official-format ImageNet MSDNet with four scales and few blocks computes, in its last
blocks, finer scales that no classifier reads. The official counter counts that work; the
exported graphs do not hold it. The exporter used to refuse such a model ("a stage
recomputes or drops work"); it now exports it, records the dead work per exit, and still
refuses a chain that really recomputes (or drops) work.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")

from msdnet_toy import randomize  # noqa: E402

from ranet_edge.assets import DEFAULT_BUNDLE  # noqa: E402
from ranet_edge.errors import BundleError, ExportError  # noqa: E402
from ranet_edge.export.exporter import ExportSpec, export_model  # noqa: E402
from ranet_edge.export.graph_costs import check_flops, count_costs  # noqa: E402
from ranet_edge.export.partition import cut_at_exits, partition  # noqa: E402
from ranet_edge.export.to_onnx import to_onnx  # noqa: E402
from ranet_edge.model import MSDNet  # noqa: E402
from ranet_edge.msdnet_config import MSDNetConfig  # noqa: E402
from ranet_edge.runtime.manifest import load_manifest  # noqa: E402

# Four scales, two one-layer blocks: block 1 keeps three scales, of which only the coarsest
# reaches a classifier, and so is the work of block 0 that only those finer scales read.
CONFIG = MSDNetConfig(data="ImageNet", nBlocks=2, base=1, step=1, nChannels=4, growthRate=4,
                      grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4))


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(MSDNet(CONFIG), 0)


@pytest.fixture(scope="module")
def traced(model):
    return to_onnx(model, model.input_shape, 17, None, [])


@pytest.fixture(scope="module")
def official_ckpt(model, tmp_path_factory):
    """The model as the official trainer saves it: no flags, DataParallel names."""
    path = tmp_path_factory.mktemp("ckpt") / "model_best.pth.tar"
    torch.save({"epoch": 90, "arch": "msdnet", "best_prec1": 0.0,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def bundle(official_ckpt, tmp_path_factory):
    from ranet_edge.export.ranet import export_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "b"
    export_checkpoint(official_ckpt, out, ExportSpec(validate_batches=(2,)), log=quiet)
    return out


def shapes(traced):
    return {k: v.shape for k, v in traced.values.items()}


def test_dead_work_is_found_from_the_autograd_graph(model, traced):
    from ranet_edge.export.graph_costs import node_flops

    costs = model.exit_costs()
    assert 0 < costs[0].dead_flops < costs[1].dead_flops < costs[1].flops
    # the ONNX export keeps only what the logits need: exactly the official count less the dead work
    assert sum(node_flops(traced.graph, shapes(traced))) == costs[-1].flops - costs[-1].dead_flops


def test_no_dead_work_where_every_scale_is_read(data_dir):
    from ranet_edge.checkpoint import load_checkpoint

    loaded = load_checkpoint(data_dir / "msdnet-cifar10-b5.pth")  # the golden official checkpoint
    golden = np.load(data_dir / "msdnet-cifar10-b5.npz")
    costs = loaded.model.exit_costs()
    assert [c.flops for c in costs] == golden["flops"].tolist()
    assert [c.dead_flops for c in costs] == [0] * len(costs)


def test_the_old_check_refused_it_and_the_new_one_exports_it(model, traced):
    costs = model.exit_costs()
    stages = cut_at_exits(traced.graph, traced.num_exits)
    reference = [c.flops for c in costs]
    with pytest.raises(ExportError, match="drops work"):  # dead work taken for lost work
        count_costs(traced.graph, shapes(traced), stages, traced.num_exits, reference)
    got = count_costs(traced.graph, shapes(traced), stages, traced.num_exits, reference,
                      reference_dead_flops=[c.dead_flops for c in costs])
    assert got.flops == reference and got.dead_flops == [c.dead_flops for c in costs]
    assert got.run_flops[-1] == reference[-1] - costs[-1].dead_flops
    assert all(r <= f for r, f in zip(got.run_flops, got.flops, strict=True))


def test_a_partition_that_recomputes_is_refused_in_one_line(model, traced):
    """Perturbed partition: every stage computes its exit from the image, so the second
    stage repeats the first stage's work instead of reading it. Dead work must not hide it."""
    costs = model.exit_costs()
    honest = cut_at_exits(traced.graph, traced.num_exits)
    recomputing = [honest[0]] + [partition(traced.graph, [[f"logits_{k}"]])[0] for k in range(1, traced.num_exits)]
    for st, k in zip(recomputing, range(traced.num_exits), strict=True):
        st.exits[:] = [k]
    with pytest.raises(ExportError) as info:
        count_costs(traced.graph, shapes(traced), recomputing, traced.num_exits, [c.flops for c in costs],
                    reference_dead_flops=[c.dead_flops for c in costs])
    msg = str(info.value)
    assert "\n" not in msg and "recomputes work an earlier stage computed" in msg


def test_check_flops_tells_dead_work_from_recomputation():
    check_flops([80, 160], [100, 200], [10, 40])  # deferred live work, then dead work: fine
    with pytest.raises(ExportError, match="recomputes"):
        check_flops([80, 170], [100, 200], [10, 40])  # 10 more than the live work
    with pytest.raises(ExportError, match="recomputes"):
        check_flops([95, 160], [100, 200], [10, 40])  # more than the live work at exit 0
    with pytest.raises(ExportError, match="drops work"):
        check_flops([80, 150], [100, 200], [10, 40])
    with pytest.raises(ExportError, match="one count per exit"):
        check_flops([80, 160], [100, 200], [10])


def test_the_bundle_records_dead_work_and_runs(model, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    costs = model.exit_costs()
    exits = manifest["exits"]
    assert [e["flops"] for e in exits] == [c.flops for c in costs]
    assert [e["dead_flops"] for e in exits] == [c.dead_flops for c in costs]
    assert exits[-1]["run_flops"] == costs[-1].flops - costs[-1].dead_flops
    m = load_manifest(bundle)
    assert m.exit_costs("dead_flops") == [c.dead_flops for c in costs]

    from ranet_edge.runtime import ExitChain

    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    for got, ref in zip(ExitChain.load(bundle, threads=1).run_all(x), want, strict=True):
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


def test_old_bundles_without_the_field_load_as_no_dead_work(bundle, tmp_path):
    """Bundles written before the field existed (same schema version) read as no dead work."""
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    data = json.loads((old / "manifest.json").read_text())
    for e in data["exits"]:
        del e["dead_flops"]
    (old / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(old)
    assert m.exit_costs("dead_flops") == [0] * m.num_exits
    assert m.exit_costs("flops") == [e["flops"] for e in data["exits"]]
    assert load_manifest(DEFAULT_BUNDLE).exit_costs("dead_flops") == [0] * 6  # the shipped model reads every map


@pytest.mark.parametrize(("value", "match"), [(-1, "exits\\[1\\].dead_flops"), ("many", "exits\\[1\\].dead_flops"),
                                              (10**12, "more than its flops")])
def test_a_bad_dead_flops_is_refused_in_one_line(bundle, tmp_path, value, match):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    data = json.loads((broken / "manifest.json").read_text())
    data["exits"][1]["dead_flops"] = value
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=match) as info:
        load_manifest(broken)
    assert "\n" not in str(info.value)


def test_info_and_inspect_say_so_in_one_line(model, bundle, official_ckpt, run):
    dead, total = model.exit_costs()[-1].dead_flops, model.exit_costs()[-1].flops
    line = f"dead work: {dead / 1e6:.2f} of the {total / 1e6:.2f} official MFLOPs"
    for args in (("info", bundle), ("inspect", official_ckpt)):
        res = run(*args)
        assert res.exit_code == 0, res.output
        notes = [ln for ln in res.output.splitlines() if ln.startswith("dead work:")]
        assert len(notes) == 1 and notes[0].startswith(line), res.output
    res = run("info", bundle, "--json")
    assert [r["dead_flops"] for r in json.loads(res.output)["exits"]] == [c.dead_flops for c in model.exit_costs()]
    res = run("info", DEFAULT_BUNDLE)  # no dead work: no line
    assert res.exit_code == 0 and "dead work" not in res.output


def test_a_model_without_an_own_count_records_no_dead_work(tmp_path):
    """Without a reference count, ``flops`` is the cut's own count, which holds no dead work."""
    from msdnet_toy import make_toy

    result = export_model(make_toy(seed=1), tmp_path / "toy", (3, 32, 32), ExportSpec(validate_batches=(1,)),
                          log=quiet)
    assert all(e["dead_flops"] == 0 for e in result.manifest["exits"])

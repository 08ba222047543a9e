"""Validation against PyTorch as a public function (issue 12): a good export returns the
table its manifest stores; a broken graph raises one ValidationError carrying every row."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner
from msdnet_toy import make_toy, save_random_ranet
from onnx import numpy_helper
from torch import nn

from ranet_edge.cli import get_cli
from ranet_edge.errors import ExportError, RanetEdgeError, ValidationError
from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.partition import cut_at_exits
from ranet_edge.export.to_onnx import to_onnx
from ranet_edge.export.validate import ExitCheck, validate_bundle, validate_graphs

SHAPE = (3, 32, 32)


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    model = make_toy(seed=2)
    out = tmp_path_factory.mktemp("toy") / "bundle"
    result = export_model(model, out, SHAPE, ExportSpec(), log=quiet)
    return model, out, result


def test_a_good_export_returns_the_table_its_manifest_stores(toy_bundle):
    model, out, result = toy_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.table == manifest["validation"]["table"]
    assert [(r["exit"], r["batch"]) for r in result.table] == [(k, b) for b in (1, 3) for k in range(4)]
    # the bundle on disk, validated again, gives the very rows the exporter measured
    table = validate_bundle(model, out)
    assert all(isinstance(row, ExitCheck) and row.passed for row in table)
    assert [row.to_dict() for row in table] == manifest["validation"]["table"]


def _perturb_stage(bundle, stage: int, factor: float = 1.05) -> None:
    """Scale the largest weight tensor of one stage and re-sign the manifest, so that only
    validation (not the sha256 check) can notice."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["graphs"][stage]
    m = onnx.load(str(bundle / entry["path"]))
    init = max(m.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    (bundle / entry["path"]).write_bytes(m.SerializeToString(deterministic=True))
    digest = hashlib.sha256((bundle / entry["path"]).read_bytes()).hexdigest()
    entry["sha256"] = digest
    for e in manifest["exits"]:
        if e["graph"] == entry["path"]:
            e["sha256"] = digest
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_perturbed_stage_raises_one_error_with_the_whole_table(toy_bundle, tmp_path):
    import shutil

    model, out, _ = toy_bundle
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    _perturb_stage(broken, 2)
    with pytest.raises(ValidationError) as info:
        validate_bundle(model, broken)
    err = info.value
    assert isinstance(err, ExportError) and isinstance(err, RanetEdgeError)
    # every check is in the table, passing or not: 4 exits at batch 1 and 3
    assert [(r.exit, r.batch) for r in err.table] == [(k, b) for b in (1, 3) for k in range(4)]
    assert all(r.passed for r in err.table if r.exit < 2)  # stages 0 and 1 are untouched
    assert not any(r.passed for r in err.table if r.exit == 2)
    worst = max(err.table, key=lambda r: r.max_rel_diff)
    assert worst.exit >= 2 and worst.max_rel_diff > 1e-3
    # one line naming the worst exit and the fix; str() adds the table
    assert "\n" not in err.summary
    assert f"exit {worst.exit} at batch {worst.batch}" in err.summary and "--tolerance" in err.summary
    assert str(err).splitlines()[0] == err.summary and str(err).count("FAIL") == sum(not r.passed for r in err.table)


class TracedBranch(nn.Module):
    """Two exits; the second scales its features by a Python branch on the input's values,
    which tracing freezes at the branch the all-zero export example takes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(8, 5), nn.Linear(8, 5)])

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        scale = 2.0 if float(x.abs().sum()) > 0 else 1.0
        return [self.heads[0](h), self.heads[1](h * scale)]


def test_graphs_that_differ_from_eager_are_caught_in_memory():
    model = TracedBranch().eval()
    notes: list[str] = []
    traced = to_onnx(model, SHAPE, 17, None, notes)
    stages = cut_at_exits(traced.graph, traced.num_exits)
    with pytest.raises(ValidationError) as info:
        validate_graphs(model, stages, SHAPE, batches=(1, 2))
    table = info.value.table
    assert [(r.exit, r.batch, r.passed) for r in table] == [(0, 1, True), (1, 1, False), (0, 2, True), (1, 2, False)]
    assert "exit 1 at batch" in info.value.summary


def test_the_exporter_writes_nothing_and_the_cli_prints_one_line(tmp_path):
    with pytest.raises(ValidationError):
        export_model(TracedBranch(), tmp_path / "b", SHAPE, ExportSpec(), log=quiet)
    assert list(tmp_path.iterdir()) == []

    ckpt = tmp_path / "tiny.pt"
    save_random_ranet("tiny", ckpt, seed=1, logit_scale=30.0)
    res = CliRunner().invoke(get_cli(), ["export", str(ckpt), "-o", str(tmp_path / "c"), "--tolerance", "0"])
    assert res.exit_code == 2 and not (tmp_path / "c").exists()
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # the error: one line, no traceback
    assert res.stderr.startswith("error: validation against PyTorch failed: exit ")
    assert "FAIL" in res.stdout and "(tolerance 0)" in res.stdout  # the table, where a passing one goes

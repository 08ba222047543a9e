"""Export refusals and writes (issue 3): bad input through the API and the CLI (one-line
errors, exit code 2, nothing left behind), --force, nested output directories, validation
failures, and the CLI's successful export."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from click.testing import CliRunner
from export_support import C1_PTH, quiet, read_manifest
from msdnet_toy import make_toy, save_random_ranet

from ranet_edge.cli import get_cli
from ranet_edge.errors import CheckpointError, ExportError, RanetEdgeError
from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.presets import get_preset
from ranet_edge.runtime import ExitChain


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_random_ranet("tiny", path, seed=1, logit_scale=30.0)
    return path


# --------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path: Path, tiny: Path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    return {
        "missing": (tmp_path / "nope.pth", None, tmp_path / "o1", CheckpointError),
        "not-a-checkpoint": (junk, None, tmp_path / "o2", CheckpointError),
        "flags-mismatch": (C1_PTH, "cifar10-w8", tmp_path / "o3", CheckpointError),
        "existing-output": (tiny, None, occupied, ExportError),
    }


BAD = ["missing", "not-a-checkpoint", "flags-mismatch", "existing-output"]


@pytest.mark.parametrize("case", BAD)
def test_export_bad_input_api(case, tmp_path, tiny_ckpt):
    ckpt, preset, out, error = _bad_inputs(tmp_path, tiny_ckpt)[case]
    config = get_preset(preset) if preset else None
    with pytest.raises(error) as info:
        export_checkpoint(ckpt, out, ExportSpec(), config=config, log=quiet)
    assert isinstance(info.value, RanetEdgeError)
    msg = str(info.value)
    assert "\n" not in msg
    if case == "existing-output":
        assert "--force" in msg
        assert (out / "keep.txt").read_text() == "precious"
    else:
        assert not out.exists()
    if case == "missing":
        assert "does not exist" in msg
    if case == "flags-mismatch":
        assert "does not match" in msg


@pytest.mark.parametrize("case", BAD)
def test_export_bad_input_cli(case, tmp_path, tiny_ckpt):
    ckpt, preset, out, _ = _bad_inputs(tmp_path, tiny_ckpt)[case]
    args = ["export", str(ckpt), "-o", str(out)] + (["--preset", preset] if preset else [])
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_force_replaces_existing_output(tmp_path, tiny_ckpt):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_checkpoint(tiny_ckpt, out, ExportSpec(), force=True, log=quiet)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary or trash left


def test_export_into_a_new_nested_directory(tmp_path, tiny_ckpt, monkeypatch):
    """The parent of the output directory need not exist. The bundle is staged in a temporary
    directory and renamed into place, so the staging directory must be on the output's
    filesystem even when the system temporary directory (often a tmpfs) is not."""
    import os
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        monkeypatch.setattr(tempfile, "tempdir", str(shm))
    out = tmp_path / "new" / "deeper" / "bundle"
    export_checkpoint(tiny_ckpt, out, ExportSpec(), log=quiet)
    assert (out / "manifest.json").is_file()
    ExitChain.load(out, warmup=False)


def test_bad_granularity(tmp_path):
    model = make_toy(seed=6)
    with pytest.raises(ExportError, match="sub-networks"):  # the toy names no sub-networks
        export_model(model, tmp_path / "a", (3, 32, 32), ExportSpec(granularity="subnetwork"), log=quiet)
    with pytest.raises(ExportError, match="granularity"):
        export_model(model, tmp_path / "b", (3, 32, 32), ExportSpec(granularity="layer"), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_succeeds(tmp_path, tiny_ckpt):
    result = CliRunner().invoke(get_cli(), ["export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--monolithic"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "tolerance" in result.output  # the table is printed on success
    manifest = read_manifest(tmp_path / "b")
    assert manifest["monolithic"]["path"] == "monolithic.onnx"
    assert manifest["validation"]["tolerance"] == 1e-4 and manifest["validation"]["table"]
    assert {"onnx", "onnxruntime", "torch", "ranet_edge"} <= set(manifest["tools"])


def test_validation_failure_leaves_nothing(tmp_path):
    model = make_toy(seed=4)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export_model(model, out, (3, 32, 32), ExportSpec(tolerance=0.0), log=quiet)
    msg = str(info.value)
    assert "validation" in msg and "FAIL" in msg
    table = msg.splitlines()[1:]
    assert "tolerance 0" in table[0]
    rows = [line.split() for line in table[1:]]
    assert len(rows) == 4 * 2  # every exit at both validated batch sizes
    assert {(int(r[0]), int(r[1])) for r in rows} == {(k, b) for k in range(4) for b in (1, 3)}
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory either


def test_generic_export_refuses_a_single_output_model(tmp_path):
    import torch

    from ranet_edge.errors import ExportError
    from ranet_edge.export.exporter import ExportSpec, export_model

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ExportError, match="list of exit logits"):
        export_model(model, tmp_path / "b", (3, 8, 8), ExportSpec(), log=lambda m: None)
    assert not (tmp_path / "b").exists()

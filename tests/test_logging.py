"""Library progress goes through `logging`; the CLI prints it as it always did (issue 12)."""
from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")  # the export extra: skipped in the lean install
pytest.importorskip("onnx")

from ranet_edge.cli import get_cli
from ranet_edge.export.exporter import ExportSpec
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.presets import get_preset
from ranet_edge.train import save_atomic


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import torch

    from ranet_edge.checkpoint import FORMAT
    from ranet_edge.model import RANet

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_atomic({"format": FORMAT, "config": cfg.to_dict(), "model": RANet(cfg).state_dict()}, path)
    return path


def test_export_logs_its_validation_table(tiny_ckpt, tmp_path, caplog):
    logger = logging.getLogger("ranet_edge")
    propagate = logger.propagate
    logger.propagate = True  # the CLI, if a test ran it first, stops propagation to the root
    try:
        with caplog.at_level(logging.INFO, logger="ranet_edge.export.exporter"):
            export_checkpoint(tiny_ckpt, tmp_path / "bundle", ExportSpec(validate_batches=(1,)))
    finally:
        logger.propagate = propagate
    tables = [r.getMessage() for r in caplog.records if r.name == "ranet_edge.export.exporter"]
    assert tables and "max|diff|" in tables[0] and "(tolerance" in tables[0]


@pytest.mark.slow
def test_the_cli_prints_the_logged_table_on_stdout(tiny_ckpt, tmp_path):
    res = CliRunner().invoke(get_cli(), ["export", str(tiny_ckpt), "-o", str(tmp_path / "b")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "max|diff|" in res.stdout and "wrote" in res.stdout

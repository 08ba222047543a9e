"""The CLI foundation: version, `inspect`, and one-line errors with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ranet_edge import __version__
from ranet_edge.presets import get_preset


def _assert_clean_error(result):
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:"), result.output
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.output and "ranet-edge" in result.output


@pytest.mark.needs("torch")
def test_inspect_json(run, golden_c1_pth, golden_c1_npz):
    result = run("inspect", golden_c1_pth, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"config", "exits", "flops", "params"} <= set(report)
    assert report["config"] == get_preset("cifar10-c1").to_dict()
    assert report["exits"] == 6 == len(report["flops"]) == len(report["params"])
    with np.load(golden_c1_npz) as z:
        assert report["flops"] == z["flops"].tolist()
    assert report["params"][-1] == 2547601  # reference/cifar10-c1.txt, total parameters


@pytest.mark.slow
@pytest.mark.needs("torch")
def test_inspect_text(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth)
    assert result.exit_code == 0, result.output
    assert "official layout" in result.output and "inferred" in result.output
    assert "--step 2 --stepmode lg" in result.output
    assert "58.92" in result.output  # last exit, MFLOPs


@pytest.mark.slow
@pytest.mark.needs("torch")
def test_inspect_with_matching_preset(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth, "--preset", "cifar10-c1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["flops"][0] == 8360714


@pytest.mark.slow
@pytest.mark.needs("torch")
def test_inspect_with_official_flags(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth, "--step", "2", "--stepmode", "lg", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exits"] == 6


@pytest.mark.needs("torch")
def test_inspect_wrong_preset(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth, "--preset", "cifar10-w8")
    _assert_clean_error(result)
    assert "missing" in result.output or "wrong shape" in result.output


@pytest.mark.needs("torch")
def test_inspect_text_file(run, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    _assert_clean_error(run("inspect", path))


@pytest.mark.needs("torch")
def test_inspect_missing_file(run, tmp_path):
    _assert_clean_error(run("inspect", tmp_path / "missing.pth"))


@pytest.mark.needs("torch")
def test_inspect_unknown_preset(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth, "--preset", "nope")
    _assert_clean_error(result)
    assert "cifar10-c1" in result.output  # lists the valid presets


@pytest.mark.needs("torch")
def test_inspect_invalid_flags(run, golden_c1_pth):
    result = run("inspect", golden_c1_pth, "--scale-list", "1-3-4")
    _assert_clean_error(result)
    assert "scale_list" in result.output

"""Contract hygiene: strict JSON everywhere, a manifest that does not contradict itself, one
line for every usage error. Torch-free: runs in the lean install too."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ranet_edge
from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import BundleError, InputError
from ranet_edge.runtime import ExitChain, load_manifest
from ranet_edge.runtime.manifest import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no shipped bundle")


def strict_load(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers in other languages do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- strict JSON
def repository_json_files() -> list[Path]:
    """Every JSON file git tracks in this checkout; where there is no checkout or no git (the
    tests copied beside an installed wheel, as the arm64 job runs them), the installed
    package's shipped ones."""
    try:
        r = subprocess.run(["git", "ls-files", "-z", "*.json"], capture_output=True, text=True, cwd=ROOT)
        tracked = r.stdout.split("\0") if r.returncode == 0 else []
    except FileNotFoundError:  # git is not installed
        tracked = []
    if any(tracked):
        return [ROOT / name for name in tracked if name]
    return sorted(Path(ranet_edge.__file__).parent.rglob("*.json"))


def test_every_json_file_in_the_repository_is_strict():
    files = repository_json_files()
    assert any(f.name == "manifest.json" for f in files), files
    for path in files:
        strict_load(path.read_text())


def test_without_git_the_shipped_json_files_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git to run
    files = repository_json_files()
    package = Path(ranet_edge.__file__).parent
    assert package / "assets" / "default-bundle" / "manifest.json" in files
    assert all(package in f.parents for f in files)


def test_writer_refuses_nan_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": float("nan")})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": [float("inf")]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_calibrated_never_exits_are_strict_json(run, bundle):
    """p = 0.05 gives the later exits no share ("nobody leaves here"): stored as 1e8, not Infinity."""
    res = run("calibrate", bundle, "--p", "0.05", "--name", "greedy", "--json")
    assert res.exit_code == 0, res.output
    report = strict_load(res.stdout[res.stdout.index("{"):])
    stored = strict_load((bundle / "thresholds.json").read_text())["points"]["greedy"]["thresholds"]
    assert stored == report["thresholds"] and stored[-1] is None and 1e8 in stored
    chain = ExitChain.load(bundle)
    point = chain.operating_points["greedy"]
    assert np.isinf(point.thresholds).sum() >= 2  # read back as inf
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:100])
    exits = chain.predict(x, "greedy").exits
    never = [k for k, t in enumerate(stored[:-1]) if t == 1e8]
    assert not np.isin(exits, never).any()


def test_json_outputs_are_strict(run, tmp_path):
    for args in (["info", DEFAULT_BUNDLE, "--json"], ["providers", "--json"], ["doctor", "--json"]):
        res = run(*args)
        assert res.exit_code == 0, res.output
        strict_load(res.stdout)


# --------------------------------------------------------------------------- manifest copies
@pytest.mark.parametrize("field, value", [
    ("sha256", "0" * 64), ("graph", "stage1.onnx"), ("inputs", ["image"]),
    ("cache_outputs", []), ("logits", "logits_3"), ("index", 0),
])
def test_exit_copies_that_disagree_with_graphs_are_refused(run, bundle, field, value):
    edit_manifest(bundle, lambda d: d["exits"][2].__setitem__(field, value))
    with pytest.raises(BundleError, match=rf"exits\[2\]\.{field} is .* but graphs\[2\] says"):
        load_manifest(bundle, verify=False)
    assert_one_line_error(run("info", bundle), f"exits[2].{field}", "re-export")


def test_exits_stating_each_fact_once_load(bundle):
    """A manifest may leave the copies out: graphs says it once."""
    def drop(d):
        for e in d["exits"]:
            for k in ("graph", "sha256", "inputs", "cache_outputs"):
                e.pop(k)
    edit_manifest(bundle, drop)
    chain = ExitChain.load(bundle)
    assert chain.num_exits == 6


# --------------------------------------------------------------------------- one-line usage errors
@pytest.mark.parametrize("args, fragment", [
    (["inspect", "x.pth", "--nChannels", "abc"], "'--nChannels': 'abc' is not a valid integer"),
    (["predict"], "Missing argument 'BUNDLE'"),
    (["nosuchcommand"], "No such command"),
    (["--bogus"], "No such option"),
    (["bench", "--threads", "0"], "--threads"),
    (["predict", "B", "i.png", "--threads", "-1"], "--threads"),
    (["eval", "--holdout", "0"], "--holdout"),
])
def test_usage_errors_are_one_line(run, args, fragment):
    assert_one_line_error(run(*args), fragment, "--help")


def test_threads_below_one_refused_by_the_library():
    with pytest.raises(InputError, match="threads"):
        ExitChain.load(DEFAULT_BUNDLE, threads=0)


# --------------------------------------------------------------------------- inspect on the wrong thing
def test_inspect_on_a_bundle_or_a_graph_says_what_it_is(run, tmp_path):
    assert_one_line_error(run("inspect", DEFAULT_BUNDLE), "is a ranet-edge bundle", f"ranet-edge info {DEFAULT_BUNDLE}")
    assert_one_line_error(run("inspect", DEFAULT_BUNDLE / "stage0.onnx"), "is an ONNX graph", "ranet-edge info")
    assert_one_line_error(run("inspect", DEFAULT_BUNDLE / "manifest.json"), "bundle's manifest")
    loose = tmp_path / "model.bin"  # an ONNX graph under another name, outside any bundle
    shutil.copy(DEFAULT_BUNDLE / "stage1.onnx", loose)
    assert_one_line_error(run("inspect", loose), "is an ONNX graph", "ranet-edge export")
    assert_one_line_error(run("export", DEFAULT_BUNDLE, "-o", tmp_path / "o"), "is a ranet-edge bundle")


# --------------------------------------------------------------------------- --holdout
@pytest.mark.slow
def test_holdout_of_every_image_uses_them_all(run, tmp_path):
    n = int(np.load(SAMPLE_IMAGES)["y"].shape[0])
    out = tmp_path / "eval.json"
    res = run("eval", "--data", SAMPLE_IMAGES, "--holdout", n, "--batch-size", "50", "--json", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["val_images"] + rep["eval_images"] == n
    assert_one_line_error(run("eval", "--data", SAMPLE_IMAGES, "--holdout", n + 1), f"--holdout {n + 1}", f"at most {n}")

"""Checkpoint loading: every layout, the official trained file, refusals with one-line errors."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install


from ranet_edge.checkpoint import FORMAT, load_checkpoint
from ranet_edge.errors import CheckpointError
from ranet_edge.model import RANet
from ranet_edge.presets import get_preset


@pytest.fixture(scope="module")
def golden_input(golden_c1_npz):
    with np.load(golden_c1_npz) as z:
        return torch.from_numpy(z["input"])


@pytest.fixture(scope="module")
def golden_loaded(golden_c1_pth):
    return load_checkpoint(golden_c1_pth)


def _logits(model, x):
    with torch.no_grad():
        return [out.clone() for out in model(x)]


def _assert_same_logits(a, b):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=f"exit {k} differs")


# --------------------------------------------------------------------------- layouts
@pytest.mark.slow
def test_official_layout(golden_loaded):
    assert golden_loaded.layout == "official"
    assert golden_loaded.config_source == "inferred"
    assert golden_loaded.config == get_preset("cifar10-c1")
    assert golden_loaded.meta.get("arch") == "RANet"
    assert {"epoch", "best_prec1"} <= set(golden_loaded.meta)
    assert not golden_loaded.model.training


@pytest.mark.slow
def test_three_layouts_give_the_same_logits(tmp_path, golden_loaded, golden_input):
    reference = _logits(golden_loaded.model, golden_input)
    state = golden_loaded.model.state_dict()

    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    prefixed = tmp_path / "bare-module.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    ours = tmp_path / "ours.pt"
    torch.save({"format": FORMAT, "config": golden_loaded.config.to_dict(), "model": state}, ours)

    expected = {bare: ("state_dict", "inferred"), prefixed: ("state_dict", "inferred"),
                ours: ("ranet-edge", "checkpoint")}
    for path, (layout, source) in expected.items():
        loaded = load_checkpoint(path)
        assert (loaded.layout, loaded.config_source) == (layout, source), path.name
        assert loaded.config == get_preset("cifar10-c1")
        _assert_same_logits(_logits(loaded.model, golden_input), reference)


@pytest.mark.slow
def test_explicit_preset_is_used_without_inference(golden_c1_pth, golden_loaded, golden_input):
    loaded = load_checkpoint(golden_c1_pth, get_preset("cifar10-c1"), "preset")
    assert loaded.config_source == "preset"
    _assert_same_logits(_logits(loaded.model, golden_input), _logits(golden_loaded.model, golden_input))


def test_ours_layout_config_wins_over_inference(tmp_path):
    # A config stored in our format is used as is (here: a 'tiny' model, random weights).
    model = RANet(get_preset("tiny"))
    path = tmp_path / "tiny.pt"
    torch.save({"format": FORMAT, "config": get_preset("tiny").to_dict(), "model": model.state_dict(),
                "classes": ["a", "b"]}, path)
    loaded = load_checkpoint(path)
    assert loaded.config == get_preset("tiny")
    assert loaded.meta["classes"] == ["a", "b"]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    _assert_same_logits(_logits(loaded.model, x), _logits(model, x))


def test_official_trained_checkpoint_infers_w8(official_w8_ckpt):
    loaded = load_checkpoint(official_w8_ckpt)
    assert loaded.layout == "official"
    assert loaded.config_source == "inferred"
    assert loaded.config == get_preset("cifar10-w8")
    assert loaded.model.num_exits == 6
    # trained/README.md: 3.56M, 7.70M, 10.85M, 12.94M, 15.26M, 16.63M cumulative FLOPs.
    mflops = [round(c.flops / 1e6, 2) for c in loaded.model.exit_costs()]
    assert mflops == [3.56, 7.70, 10.85, 12.94, 15.26, 16.63]


# --------------------------------------------------------------------------- refusals
class _RunsCode:
    """Unpickling this runs a shell command: the marker file proves it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_plain_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump(_RunsCode(marker), fh, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("wrap", [False, True], ids=["object", "inside-state_dict"])
def test_refuses_torch_save_that_runs_code(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = _RunsCode(marker)
    torch.save({"state_dict": payload, "epoch": 1} if wrap else payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert "refusing" in message and "\n" not in message


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("obj,match", [
    ([1, 2, 3], "holds a list"),
    ({"epoch": 3}, "no state_dict of tensors"),
    ({"state_dict": {}}, "no state_dict of tensors"),
    ({"weight": torch.zeros(2)}, "not a RANet state_dict"),
])
def test_not_a_ranet_checkpoint(tmp_path, obj, match):
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_flags_mismatch_is_one_line(golden_c1_pth):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(golden_c1_pth, config=get_preset("cifar10-w8"))
    message = str(info.value)
    assert "missing" in message or "wrong shape" in message
    assert "\n" not in message
    assert "--nChannels 8" in message  # names the architecture it tried


def test_truncated_checkpoint(tmp_path, golden_c1_pth):
    path = tmp_path / "truncated.pth"
    path.write_bytes(golden_c1_pth.read_bytes()[:4096])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)

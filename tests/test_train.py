"""Training: one epoch on a real ImageFolder, exact resume, DDP with two processes, export."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install

from click.testing import CliRunner

from ranet_edge.checkpoint import load_checkpoint, read_checkpoint_file
from ranet_edge.cli import get_cli
from ranet_edge.presets import get_preset
from ranet_edge.train import TrainOptions, learning_rate, train

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A 3-class ImageFolder of 36 real PNG files whose class shows in the colour."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["bird", "cat", "ship"]):
        (root / name).mkdir()
        for i in range(12):
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            img[..., c] += 150
            cv2.imwrite(str(root / name / f"{i:03d}.png"), img)
    return root


def _opts(folder: Path, out: Path, **kw) -> TrainOptions:
    base = dict(data=str(folder), out=str(out), epochs=2, batch_size=8, lr=0.05, val_size=6, seed=3)
    base.update(kw)
    return TrainOptions(**base)


def test_one_epoch_writes_checkpoints(folder, tmp_path):
    results = train(get_preset("tiny"), _opts(folder, tmp_path, epochs=1), log=lambda m: None)
    assert len(results) == 1 and len(results[0].val_acc) == 3
    state = read_checkpoint_file(tmp_path / "last.pt")
    assert state["epoch"] == 1 and state["classes"] == ["bird", "cat", "ship"]
    assert (tmp_path / "best.pt").exists() and not list(tmp_path.glob("*.tmp"))


def test_resume_equals_uninterrupted_run(folder, tmp_path, monkeypatch):
    import ranet_edge.train as tr

    cfg = get_preset("tiny")
    train(cfg, _opts(folder, tmp_path / "straight"), log=lambda m: None)

    real_save = tr.save_atomic

    def save_then_die(obj, path):  # a job killed right after its first epoch's checkpoint
        real_save(obj, path)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, _opts(folder, tmp_path / "split"), log=lambda m: None)
    monkeypatch.setattr(tr, "save_atomic", real_save)
    assert read_checkpoint_file(tmp_path / "split" / "last.pt")["epoch"] == 1
    train(cfg, _opts(folder, tmp_path / "split", resume=True), log=lambda m: None)

    a = read_checkpoint_file(tmp_path / "straight" / "last.pt")
    b = read_checkpoint_file(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"][-1]["val_acc"] == b["history"][-1]["val_acc"]


def test_learning_rate_schedules():
    multi = TrainOptions(data="x", epochs=300)
    assert learning_rate(multi, 0) == 0.1 and learning_rate(multi, 149.9) == 0.1
    assert learning_rate(multi, 150) == pytest.approx(0.01) and learning_rate(multi, 225) == pytest.approx(0.001)
    cos = TrainOptions(data="x", epochs=10, schedule="cosine")
    assert learning_rate(cos, 0) == pytest.approx(0.1) and learning_rate(cos, 5) == pytest.approx(0.05)
    assert learning_rate(cos, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_trained_checkpoint_exports_without_flags(folder, tmp_path):
    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint

    train(get_preset("tiny"), _opts(folder, tmp_path / "run", epochs=1), log=lambda m: None)
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")
    assert loaded.config_source == "checkpoint" and loaded.config == get_preset("tiny")
    res = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "bundle", ExportSpec(simplify=False),
                            log=lambda m: None)
    # the tiny preset has 10 outputs, so the 3 folder class names are not attached
    assert res.manifest["num_classes"] == 10 and res.manifest["class_names"] is None
    assert len(res.manifest["exits"]) == 3


@pytest.mark.slow
def test_ddp_two_processes_stay_in_sync(folder, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "ranet_edge.cli", "train",
           "--data", str(folder), "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
           "--val-size", "6", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = read_checkpoint_file(tmp_path / "ddp" / "last.pt")
    assert state["world_size"] == 2
    sums = state["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    load_checkpoint(tmp_path / "ddp" / "last.pt")  # a valid checkpoint of our format


def test_cli_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(get_cli(), ["train", "--data", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output.startswith("error:") and "does not exist" in res.output
    res = runner.invoke(get_cli(), ["train", "--data", str(tmp_path), "--preset", "nope"])
    assert res.exit_code == 2 and "unknown preset" in res.output and "Traceback" not in res.output


def test_random_resized_crop_with_decoding_threads(folder, tmp_path):
    """The ImageNet augmentation path on lazily decoded files, decoded by 2 threads."""
    results = train(get_preset("tiny"), _opts(folder, tmp_path, epochs=1, augment="imagenet", workers=2),
                    log=lambda m: None)
    assert results[0].train_loss > 0


@pytest.mark.slow
def test_training_does_not_import_the_cli_and_the_cli_runs_as_a_module():
    """The layers point one way: the CLI imports training, never the reverse (issue 12);
    `python -m ranet_edge.cli` is what torchrun runs."""
    code = "import sys, ranet_edge.train; print(sorted(m for m in sys.modules if m.startswith('ranet_edge.cli')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = subprocess.run([sys.executable, "-m", "ranet_edge.cli", "train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--data" in proc.stdout

"""Shared fixtures: paths of the test vectors copied into tests/data.

The files come from the official RANet code (see docs/reference/ranet.md, "Golden vectors"):

- ``cifar10-c1.pth`` / ``imagenet-small.pth``: official-format checkpoints
  (``{'epoch', 'arch', 'state_dict', 'best_prec1'}``, keys with ``module.``);
- ``cifar10-c1.npz`` / ``imagenet-small.npz``: ``input``, ``logits_k`` and ``flops``;
- ``cifar10-c1.txt``, ``cifar10-4scale.txt``, ``imagenet.txt``: official state_dict keys
  with shapes and per-exit FLOPs/params;
- ``cifar10-w8-official.pth.tar``: a checkpoint trained by the official code.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# quick_loop: `pytest -m "not slow"` (make test) stops when a module has no fast test left
pytest_plugins = ["quick_loop"]

DATA = Path(__file__).parent / "data"
EXTRA_OF = {"torch": "export", "onnx": "export", "onnxsim": "export", "matplotlib": "plot", "onnxscript": "dynamo"}


def pytest_runtest_setup(item):
    """``@pytest.mark.needs("torch", ...)``: skip, naming the extra, where a module is not
    installed (the lean install: only ``.[cpu]`` and pytest)."""
    for mark in item.iter_markers("needs"):
        missing = [m for m in mark.args if importlib.util.find_spec(m) is None]
        if missing:
            extras = sorted({EXTRA_OF.get(m, m) for m in missing})
            pytest.skip(f"needs {', '.join(missing)} (the {', '.join(extras)} extra)")


def pytest_configure(config):
    # Every manifest.json and thresholds.json the product writes during the session is
    # validated against the shipped JSON Schema as it is renamed into place (tests/bundle_schema.py),
    # where jsonschema is installed (the test extra; the lean install skips this).
    if importlib.util.find_spec("jsonschema") is not None:
        import bundle_schema

        bundle_schema.install()
    # The models under test are tiny: one intra-op thread is fastest, and it keeps the
    # suite from crawling (seconds per forward instead of milliseconds) when another
    # process, such as a training job, already keeps every core busy.
    try:
        import torch
    except ImportError:  # the torch-free tests still run
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def golden_c1_pth() -> Path:
    return DATA / "cifar10-c1.pth"


@pytest.fixture(scope="session")
def golden_c1_npz() -> Path:
    return DATA / "cifar10-c1.npz"


@pytest.fixture(scope="session")
def golden_imagenet_small_pth() -> Path:
    return DATA / "imagenet-small.pth"


@pytest.fixture(scope="session")
def golden_imagenet_small_npz() -> Path:
    return DATA / "imagenet-small.npz"


@pytest.fixture(scope="session")
def reference_c1_txt() -> Path:
    return DATA / "cifar10-c1.txt"


@pytest.fixture(scope="session")
def reference_4scale_txt() -> Path:
    return DATA / "cifar10-4scale.txt"


@pytest.fixture(scope="session")
def reference_imagenet_txt() -> Path:
    return DATA / "imagenet.txt"


@pytest.fixture(scope="session")
def official_w8_ckpt() -> Path:
    return DATA / "cifar10-w8-official.pth.tar"


@pytest.fixture(scope="module")
def run():
    """Invoke the ``ranet-edge`` CLI in-process (CliRunner); arguments may be paths."""
    from click.testing import CliRunner

    from ranet_edge.cli import get_cli

    runner = CliRunner()
    cli = get_cli()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args])

    return invoke


def pytest_terminal_summary(terminalreporter):
    import sys

    schema = sys.modules.get("bundle_schema")
    if schema is not None and schema.COUNTS:
        terminalreporter.write_line(
            f"bundle schema: {schema.COUNTS['manifest']} manifest.json and {schema.COUNTS['thresholds']} "
            "thresholds.json validated against ranet_edge/schemas (each one the suite wrote, as it landed)")


# ------------------------------------------------------------------ the runtime tests' bundles
# Exported once per session (torch and onnx: the export extra; skipped in the lean install).
@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model, bundle) of a random 'tiny' RANet: 3 exits, logits scaled up so confidences spread."""
    pytest.importorskip("torch")
    from msdnet_toy import save_random_ranet

    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    model = save_random_ranet("tiny", root / "tiny.pt", seed=2, logit_scale=40.0)
    export_checkpoint(root / "tiny.pt", root / "bundle", ExportSpec(), log=lambda _m: None)
    return model, root / "bundle"


@pytest.fixture(scope="session")
def w8(tmp_path_factory):
    """(model, bundle) of the checkpoint trained by the official code (width 8, 6 exits)."""
    pytest.importorskip("torch")
    from ranet_edge.checkpoint import load_checkpoint
    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint

    ckpt = DATA / "cifar10-w8-official.pth.tar"
    out = tmp_path_factory.mktemp("w8") / "bundle"
    export_checkpoint(ckpt, out, ExportSpec(), log=lambda _m: None)
    return load_checkpoint(ckpt).model, out


@pytest.fixture(scope="session")
def tiny_chain(tiny):
    from ranet_edge.runtime import ExitChain

    return ExitChain.load(tiny[1])


@pytest.fixture(scope="session")
def w8_chain(w8):
    from ranet_edge.runtime import ExitChain

    return ExitChain.load(w8[1])


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A private copy of the tiny bundle to tamper with."""
    import shutil

    return Path(shutil.copytree(tiny[1], tmp_path / "bundle"))


@pytest.fixture
def shipped_copy(tmp_path):
    """(bundle, images, labels): a writable copy of the shipped bundle and its 500 labelled images."""
    import shutil

    import numpy as np

    from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES

    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    with np.load(SAMPLE_IMAGES) as z:
        return bundle, z["x"], z["y"].astype(np.int64)


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory):
    """(model, bundle) of the tests' BERT-like early-exit encoder (text_models.py: int64 ids and
    mask, a dynamic sequence axis, exits after layers 2/4/6), exported with its monolithic graph, a ``tokenizer.json``
    (text_serve_support.py) and two operating points fitted on its own random texts (so
    samples leave at every exit): ``mp`` (max_prob, the default) and ``ent`` (entropy)."""
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    from text_models import SEQUENCE, EarlyExitBert, text_batch
    from text_serve_support import build_tokenizer, store_points

    from ranet_edge.export import ExportSpec, export_model

    root = tmp_path_factory.mktemp("text")
    model = EarlyExitBert().eval()
    build_tokenizer(root / "tokenizer.json")
    export_model(model, root / "bundle", text_batch(2, 12), ExportSpec(dynamic_axes=SEQUENCE, monolithic=True),
                 assets={"tokenizer.json": root / "tokenizer.json"}, log=lambda _m: None)
    store_points(root / "bundle")
    return model, root / "bundle"

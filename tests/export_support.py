"""What the export tests share (test_export.py, test_export_options.py, test_export_errors.py):
the test checkpoints, bundles chained with plain onnxruntime (never our runtime), and the
checks against PyTorch. Import it after ``pytest.importorskip("torch")``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

DATA = Path(__file__).parent / "data"
C1_PTH, C1_NPZ = DATA / "cifar10-c1.pth", DATA / "cifar10-c1.npz"
IMS_PTH, IMS_NPZ = DATA / "imagenet-small.pth", DATA / "imagenet-small.npz"
W8_CKPT = DATA / "cifar10-w8-official.pth.tar"


def quiet(_msg: str) -> None:
    pass


def input_name(manifest: dict) -> str:
    """The image input's name: from the preprocessing block; a bundle without one (see
    test_generic_export_records_its_input) falls back to the first graph's only input."""
    if "preprocessing" in manifest:
        return manifest["preprocessing"]["input"]
    (name,) = manifest["graphs"][0]["inputs"]
    return name


def plain_chain_env(bundle: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Chain the bundle's graphs with bare onnxruntime, matching tensors by name; returns
    every tensor that crossed a graph boundary or left as logits."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    env = {input_name(manifest): x}
    for g in manifest["graphs"]:
        sess = ort.InferenceSession(str(bundle / g["path"]), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {name: env[name] for name in g["inputs"]})
        env.update(zip([o.name for o in sess.get_outputs()], outs))
    return env


def plain_chain(bundle: Path, x: np.ndarray) -> list[np.ndarray]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    env = plain_chain_env(bundle, x)
    return [env[e["logits"]] for e in manifest["exits"]]


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model.eval()(torch.from_numpy(x))]


def assert_logits_close(got: list[np.ndarray], want: list[np.ndarray], rel: float = 1e-4) -> None:
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (k, g.shape, w.shape)
        scale = float(np.abs(w).max())
        assert scale > 0, f"exit {k}: reference logits are all zero"
        diff = float(np.abs(g - w).max())
        assert diff <= rel * scale, f"exit {k}: max|diff| {diff:.3e} > {rel:g} * {scale:.3e}"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def bundle_files(bundle: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}

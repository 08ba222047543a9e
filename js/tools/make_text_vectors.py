"""Test vectors for the JavaScript driver on a bundle of named inputs: a small BERT-like
early-exit encoder (int64 ``input_ids`` and ``attention_mask``, a dynamic sequence axis) whose
exits differ in class count, and the Python runtime's answers on it.

    .venv/bin/python js/tools/make_text_vectors.py            # the vectors, from the committed bundle
    .venv/bin/python js/tools/make_text_vectors.py --export   # export the bundle again (torch), then the vectors

The bundle (``js/test/fixtures/text-bundle``, about 0.4 MB) is the encoder of
``tests/text_models.py`` with random weights, exits after layers 1, 2, 3, 4 and 6, and 3 classes
at exit 0 against 5 at the others (exit 0's head is narrower; exits 1-4 share one head, so
that they often agree and the patience rule lets samples out), exported with ``export_model``. ``text-vectors.json`` holds, for two sequence lengths, the inputs, every
exit's logits and what ``ExitChain.predict`` and ``ExitChain.anytime`` answer under the three
exit rules; reading the committed bundle needs no torch. ``tests/test_js_text_vectors.py``
regenerates the vectors and checks that the committed ones are current.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "js" / "test" / "fixtures"
BUNDLE = FIXTURES / "text-bundle"
VECTORS = FIXTURES / "text-vectors.json"
EXITS = (1, 2, 3, 4, 6)  # the layers after which an exit classifies the first token
CLASSES = (3, 5, 5, 5, 5)  # exit 0: coarse classes; a patience streak restarts at exit 1
VOCAB = 64
NOISE = 0.8  # how far each later fine head is from exit 1's
#: (name, samples, sequence length, seed): two lengths, so the sequence axis really moves
SETS = (("len7", 24, 7, 1), ("len19", 24, 19, 2))
#: A sample whose score lies this close to a threshold may leave elsewhere in a backend whose
#: logits differ within the tolerance; such samples are listed per rule, not compared.
MARGIN = 1e-5


def _make_vectors():
    """js/tools/make_vectors.py (the image vectors) as a module: its routing reference and margins."""
    spec = importlib.util.spec_from_file_location("make_vectors", Path(__file__).with_name("make_vectors.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(out: Path = BUNDLE) -> None:
    """Export the encoder to ``out`` (torch and onnx: the export extra)."""
    import copy
    import shutil

    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "tests"))
    from text_models import SEQUENCE, EarlyExitBert, text_batch

    from ranet_edge.export import ExportSpec, export_model

    model = EarlyExitBert(vocab=VOCAB, exits=EXITS, classes=CLASSES[-1], seed=3)
    torch.manual_seed(4)
    model.heads[0][2] = nn.Linear(model.heads[0][2].in_features, CLASSES[0])
    for k in range(2, len(EXITS)):  # near copies of one fine head: neighbouring exits often agree (patience)
        model.heads[k] = copy.deepcopy(model.heads[1])
        with torch.no_grad():
            for w in model.heads[k].parameters():
                w.add_(NOISE * w.std() * torch.randn_like(w))
    with torch.no_grad():  # larger logits: confidences spread over (1/C, 1), so every rule sends samples everywhere
        for head in model.heads:
            head[2].weight.mul_(6.0)
    model.eval()
    if out.exists():
        shutil.rmtree(out)
    export_model(model, out, text_batch(2, 12, VOCAB), ExportSpec(dynamic_axes=SEQUENCE), log=lambda _m: None)


def inputs(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """int64 ids and a 0/1 mask, each row padded after a random length of at least 1 token."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (n, length)).astype(np.int64) * mask, "attention_mask": mask}


def _specs(logits: list[np.ndarray]) -> dict[str, tuple]:
    """key -> (thresholds, rule, patience): max_prob and entropy thresholds at each exit's median
    score over both sets (samples leave at every exit), and patience 1 and 2."""
    from ranet_edge.runtime.decision import entropy, softmax

    conf = [float(np.median(softmax(z).max(axis=1))) for z in logits[:-1]]
    ent = [float(np.median(entropy(z, 1.0))) for z in logits[:-1]]
    return {"max_prob": (conf, "max_prob", None), "entropy": (ent, "entropy", None),
            "patience:1": (None, "patience", 1), "patience:2": (None, "patience", 2)}


def build(bundle: Path = BUNDLE) -> dict:
    """The vectors of ``bundle`` (see the module doc)."""
    from ranet_edge.runtime import ExitChain

    mv = _make_vectors()
    chain = ExitChain.load(bundle, provider="cpu", threads=1)
    xs = {name: inputs(n, length, seed) for name, n, length, seed in SETS}
    every = {name: chain.run_all(x) for name, x in xs.items()}
    specs = _specs([np.concatenate(col) for col in zip(*every.values(), strict=True)])
    sets = []
    for name, n, length, _ in SETS:
        x, logits = xs[name], every[name]
        predictions = {}
        for key, (value, rule, patience) in specs.items():
            thr, temps, rule = chain.resolve_rule(value, rule, patience)
            res = chain.predict(x, value, rule=rule, patience=patience)
            exits, labels, conf = mv._route(logits, thr, temps, rule)
            if not (np.array_equal(res.exits, exits) and np.array_equal(res.labels, labels)):
                raise RuntimeError(f"{name} {key}: ExitChain.predict disagrees with the exit rule applied to run_all's logits")
            snaps = [{"exit": s.exit, "labels": s.labels.tolist(), "exits": s.exits.tolist(),
                      "final": s.final.astype(int).tolist()}
                     for s in chain.anytime(x, value, rule=rule, patience=patience)]
            margin = mv._margins(logits, thr, temps, res.exits, rule)
            given = {"patience": patience} if patience is not None else {"thresholds": value}
            predictions[key] = {
                **given, "rule": rule, "exits": res.exits.tolist(), "labels": res.labels.tolist(),
                "confidences": [float(c) for c in res.confidences],
                "probabilities": [float(p) for p in res.probabilities.ravel()],
                "exit_counts": np.bincount(res.exits, minlength=chain.num_exits).tolist(),
                "near_threshold": np.flatnonzero(margin < MARGIN).tolist(), "anytime": snaps}
        sets.append({"name": name, "n": n, "length": length,
                     "inputs": {k: v.ravel().tolist() for k, v in x.items()},
                     "logits": [[float(v) for v in z.ravel()] for z in logits], "predictions": predictions})
    rel = bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle
    return {
        "about": "Python runtime answers on a text bundle for the JS cross-checks; regenerate with "
                 ".venv/bin/python js/tools/make_text_vectors.py",
        "bundle": str(rel), "manifest_sha256": hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
        "exit_classes": list(chain.exit_classes), "margin": MARGIN, "sets": sets,
    }


if __name__ == "__main__":
    if "--export" in sys.argv[1:]:
        export()
    v = build()
    VECTORS.write_text(json.dumps(v) + "\n")
    for s in v["sets"]:
        for key, p in s["predictions"].items():
            print(f"{s['name']:<6} {key:<11} exits {p['exit_counts']}  near threshold: {len(p['near_threshold'])}")
    size = sum(f.stat().st_size for f in BUNDLE.iterdir())
    print(f"{BUNDLE.relative_to(ROOT)}: {size / 1e6:.2f} MB; {VECTORS.relative_to(ROOT)}: {VECTORS.stat().st_size / 1e6:.2f} MB")

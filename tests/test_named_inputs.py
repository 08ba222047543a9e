"""Named inputs of any dtype with dynamic axes beyond the batch: a BERT-like early-exit encoder
(int64 ids and mask, exits after layers 2/4/6) exported with a dynamic sequence axis, its
manifest, and the chain against PyTorch at two sequence lengths and two batch sizes, with
rows routed per sample across every input and every cached tensor."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
pytest.importorskip("onnx")

from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.errors import InputError  # noqa: E402
from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain, load_manifest  # noqa: E402
from ranet_edge.runtime.decision import softmax  # noqa: E402


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model = EarlyExitBert().eval()
    out = tmp_path_factory.mktemp("bert") / "bundle"
    result = export_model(model, out, text_batch(2, 12), ExportSpec(dynamic_axes=SEQUENCE, monolithic=True), log=quiet)
    return model, out, result


def _numpy(batch: dict) -> dict:
    return {k: v.numpy() for k, v in batch.items()}


def test_manifest_records_inputs_and_symbolic_axes(bert):
    _, out, result = bert
    data = json.loads((out / "manifest.json").read_text())
    assert data["preprocessing"] is None
    assert data["inputs"] == [
        {"name": "input_ids", "shape": [None, None], "dtype": "int64", "axes": ["batch", "sequence"]},
        {"name": "attention_mask", "shape": [None, None], "dtype": "int64", "axes": ["batch", "sequence"]}]
    for g in data["graphs"]:
        for name in g["cache_outputs"]:  # every handed-on tensor: its batch first, the sequence named
            assert g["tensors"][name]["axes"][0] == "batch", name
    hidden = [t for g in data["graphs"][:-1] for n, t in g["tensors"].items() if n in g["cache_outputs"]
              and t["dtype"] == "float32" and len(t["shape"]) == 3]
    assert hidden and all(t["axes"] == ["batch", "sequence", None] and t["shape"] == [None, None, 32] for t in hidden)
    # batch and sequence were read once from input_ids: later stages recompute them from it
    assert all("input_ids" in g["inputs"] for g in data["graphs"][1:])
    man = load_manifest(out)
    assert [i.name for i in man.inputs] == ["input_ids", "attention_mask"] and man.input_name == "input_ids"
    assert man.inputs[0].describe() == "int64 (batch, sequence)"
    assert [(r["batch"], r["sizes"]) for r in result.table] == [(2, {"sequence": 12})] * 3 + [(3, {"sequence": 11})] * 3
    # the examples, then a second set of another batch and another sequence length


@pytest.mark.parametrize(("n", "length"), [(1, 7), (5, 20)])
def test_chain_matches_pytorch_and_routes_every_input_per_sample(bert, n, length):
    model, out, _ = bert
    chain = ExitChain.load(out)
    batch = text_batch(n, length, seed=n + length)
    with torch.no_grad():
        ref = [z.numpy() for z in model(**batch)]
    got = chain.run_all(_numpy(batch))
    for r, g in zip(ref, got, strict=True):
        assert np.abs(r - g).max() <= 1e-4 * np.abs(r).max()
    # thresholds that send samples to every exit: rows drop between graphs, so the ids, the mask
    # and the hidden states must follow their samples through the gather
    conf = [softmax(z).max(1) for z in got]
    thr = [float(np.median(conf[0])), float(np.median(conf[1]))]
    pred = chain.predict(_numpy(batch), thresholds=thr)
    want = np.array([0 if conf[0][i] >= thr[0] else 1 if conf[1][i] >= thr[1] else 2 for i in range(n)])
    assert pred.exits.tolist() == want.tolist()
    assert n == 1 or len(set(want.tolist())) >= 2  # rows really left at several exits
    for i, k in enumerate(pred.exits):
        assert pred.labels[i] == ref[k][i].argmax()
        np.testing.assert_allclose(pred.probabilities[i], softmax(got[k][i:i + 1])[0], atol=1e-5)
    staged = sorted(int(r) for part in chain.predict_stages(_numpy(batch), thresholds=thr) for r in part.rows)
    assert staged == list(range(n))


def test_monolithic_graph_takes_the_same_inputs(bert):
    import onnxruntime as ort

    model, out, _ = bert
    sess = ort.InferenceSession(str(out / "monolithic.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    batch = text_batch(3, 9, seed=4)
    with torch.no_grad():
        ref = model(**batch)[-1].numpy()
    assert np.abs(sess.run(None, _numpy(batch))[-1] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_inputs_are_checked_against_the_manifest_in_one_line(bert):
    chain = ExitChain.load(bert[1], warmup=False)
    good = _numpy(text_batch(2, 6))
    cases = [
        (good["input_ids"], "takes 2 named inputs"),
        ({"input_ids": good["input_ids"]}, "missing attention_mask"),
        ({**good, "token_type_ids": good["input_ids"]}, "unknown token_type_ids"),
        ({**good, "input_ids": good["input_ids"].astype(np.float32)}, "input input_ids has dtype float32, expected "
                                                                       "int64 (batch, sequence)"),
        ({**good, "attention_mask": good["attention_mask"][:, None]}, "input attention_mask has shape (2, 1, 6)"),
        ({**good, "attention_mask": good["attention_mask"][:, :5]}, "input attention_mask has sequence 5 but input "
                                                                     "input_ids has 6"),
        ({**good, "attention_mask": good["attention_mask"][:1]}, "has batch 1 but input input_ids has 2"),
        ({**good, "input_ids": good["input_ids"].tolist()}, "input input_ids must be a numpy array"),
    ]
    for x, message in cases:
        with pytest.raises(InputError) as info:
            chain.predict(x)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="takes named inputs, not images"):
        chain.preprocess([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(InputError, match="without capture"):
        ExitChain.load(bert[1], capture=True)


def test_device_io_and_buckets_route_named_inputs(bert):
    """The device executor (IOBinding, rows gathered by a helper graph) on host memory, and
    buckets that pad every input: the same predictions as the plain chain."""
    _, out, _ = bert
    x = _numpy(text_batch(5, 10, seed=9))
    plain = ExitChain.load(out, warmup=False)
    conf = softmax(plain.run_all(x)[0]).max(1)
    thr = [float(np.median(conf)), 0.0]
    want = plain.predict(x, thresholds=thr)
    for chain in (ExitChain.load(out, device_io=True, warmup=False), ExitChain.load(out, buckets=[8])):
        got = chain.predict(x, thresholds=thr)
        assert got.exits.tolist() == want.exits.tolist() and got.labels.tolist() == want.labels.tolist()
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)


def test_a_carried_tokenizer_feeds_the_chain_and_is_sha256_checked(bert, tmp_path):
    import hashlib
    import shutil

    tokenizers = pytest.importorskip("tokenizers")
    from ranet_edge.errors import BundleError
    from ranet_edge.runtime.text import Tokenizer

    bundle = tmp_path / "bundle"
    shutil.copytree(bert[1], bundle)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f g"], tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(bundle / "tokenizer.json"))
    with pytest.raises(BundleError, match="carries no tokenizer.json"):
        Tokenizer.from_bundle(ExitChain.load(bundle, warmup=False))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["assets"] = {"tokenizer.json": {"sha256": hashlib.sha256((bundle / "tokenizer.json").read_bytes())
                                             .hexdigest()}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    chain = ExitChain.load(bundle, warmup=False)
    x = Tokenizer.from_bundle(chain, max_length=4)(["a b c d e f", "b z"])
    assert x["input_ids"].tolist() == [[2, 3, 4, 5], [3, 1, 0, 0]]  # truncated to 4, padded, [UNK] = 1
    assert x["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]] and x["input_ids"].dtype == np.int64
    assert chain.predict(x).labels.shape == (2,)
    with pytest.raises(InputError, match="non-empty list of strings"):
        Tokenizer.from_bundle(chain)("one text, not a list")
    (bundle / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match="tokenizer.json fails its sha256 check"):
        ExitChain.load(bundle, warmup=False)


def test_the_server_loads_a_text_bundle_with_its_named_inputs(bert):
    """Serving text bundles is tested in tests/test_serve_text.py; here: the server takes it."""
    pytest.importorskip("uvicorn")
    from ranet_edge.serve.engine import ServedModel
    from ranet_edge.serve.settings import ServeSettings

    model = ServedModel(ServeSettings(bundle=bert[1]))
    assert model.named and model.tokenizer is None
    assert [i["name"] for i in model.summary()["inputs"]] == ["input_ids", "attention_mask"]


def test_an_image_bundle_without_inputs_reads_its_input_from_preprocessing():
    """Bundles written before ``inputs`` existed (the shipped one) load unchanged."""
    from ranet_edge.assets import DEFAULT_BUNDLE
    from ranet_edge.runtime.tensors import InputInfo

    data = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert "inputs" not in data and data["preprocessing"] is not None
    man = load_manifest(DEFAULT_BUNDLE, verify=False)
    assert man.inputs == (InputInfo("image", "float32", (None, 3, 32, 32), ("batch", None, None, None)),)
    assert man.input_name == "image" and man.inputs[0].describe() == "float32 (batch, 3, 32, 32)"


def test_deadlines_and_anytime_take_named_inputs(bert):
    chain = ExitChain.load(bert[1])
    x = _numpy(text_batch(4, 9, seed=2))
    want = chain.predict(x, 0.5)
    got = chain.predict(x, 0.5, deadline_ms=60_000)  # ample: nothing cut
    assert got.exits.tolist() == want.exits.tolist() and not got.deadline_cut.any()
    assert (list(chain.anytime(x, 0.5))[-1].labels == want.labels).all()


@pytest.mark.slow
def test_the_dynamo_exporter_gives_a_bundle_that_routes_the_same(bert, tmp_path):
    pytest.importorskip("onnxscript")
    model, out, _ = bert
    spec = ExportSpec(dynamic_axes=SEQUENCE, opset=18, exporter="dynamo")
    result = export_model(model, tmp_path / "d", text_batch(2, 12), spec, log=quiet)
    assert max(r["max_rel_diff"] for r in result.table) <= 1e-4
    x = _numpy(text_batch(6, 15, seed=5))
    a, b = ExitChain.load(out).predict(x, 0.4), ExitChain.load(tmp_path / "d").predict(x, 0.4)
    assert a.exits.tolist() == b.exits.tolist() and a.labels.tolist() == b.labels.tolist()

"""Export never writes a wrong bundle: each bad model of issue 30 is refused in one line that
says why and what to do (or exported correctly), nothing is written, and the caller's model
keeps its training mode."""
from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
import torch.nn.functional as F  # noqa: E402
from text_models import EarlyExitBert, text_batch  # noqa: E402
from torch import nn  # noqa: E402

from ranet_edge.errors import ExportError  # noqa: E402
from ranet_edge.export import ExportSpec, export_model  # noqa: E402


def quiet(_: str) -> None:
    pass


class Trunk(nn.Module):
    """Three exits on a small CNN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                    nn.Conv2d(8, 8, 3, padding=1)])
        self.heads = nn.ModuleList(nn.Linear(8, 4) for _ in range(3))

    def exits(self, x):
        for conv, head in zip(self.convs, self.heads, strict=True):
            x = torch.relu(conv(x))
            yield head(x.mean((2, 3)))


class AllExits(Trunk):
    """Every exit's logits, as the exporter wants them."""

    def forward(self, x):
        return list(self.exits(x))


class FirstConfident(Trunk):
    """Stops at the first confident exit, as many papers' code does."""

    def forward(self, x):
        out = []
        for z in self.exits(x):
            out.append(z)
            if z.softmax(1).max() > 0.9:  # the line the refusal names
                break
        return out


class Moody(Trunk):
    """Returns all exits on its first call, two afterwards (Python state, no tracer warning)."""

    calls = 0

    def forward(self, x):
        Moody.calls += 1
        out = list(self.exits(x))
        return out if Moody.calls == 1 else out[:2]


class PoolLikeOther(Trunk):
    """Pools one map to another map's size: output_size comes from a tensor."""

    def forward(self, x):
        small = F.avg_pool2d(x, 2)
        out = list(self.exits(x))
        pooled = F.adaptive_avg_pool2d(torch.relu(self.convs[0](x)), small.shape[-2:])
        return [*out, self.heads[0](pooled.mean((2, 3)))]


class SequenceFirst(nn.Module):
    """Hands its hidden states on as (L, N, D): the batch is not first between exits."""

    def __init__(self):
        super().__init__()
        self.emb, self.mix = nn.Embedding(20, 8), nn.Linear(8, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 3) for _ in range(2))

    def forward(self, ids):
        h = self.emb(ids).transpose(0, 1)  # (L, N, D)
        first = self.heads[0](h[0])
        h = torch.tanh(self.mix(h))
        return [first, self.heads[1](h[0])]


def _refused(tmp_path, model, inputs, spec=None, match=""):
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export_model(model, out, inputs, spec or ExportSpec(), log=quiet)
    text = str(info.value)
    assert "\n" not in text and match in text, text
    assert not out.exists() and list(tmp_path.iterdir()) == []
    return text


def test_a_forward_that_stops_at_a_confident_exit_is_refused_naming_its_line(tmp_path):
    line = next(i for i, src in enumerate(inspect.getsourcelines(FirstConfident.forward)[0])
                if "softmax(1).max() > 0.9" in src) + inspect.getsourcelines(FirstConfident.forward)[1]
    text = _refused(tmp_path, FirstConfident().eval(), (3, 8, 8), match="branches on a tensor's value")
    assert f"test_export_refusals.py:{line}" in text and "return them all" in text


def test_another_number_of_exits_on_a_second_input_is_refused(tmp_path):
    Moody.calls = 0
    _refused(tmp_path, Moody().eval(), (3, 8, 8), match="returned 3 exits on the example input and 2 on a second")


def test_train_mode_is_noted_and_restored(tmp_path):
    model = AllExits()
    model.train()
    model.heads[1].eval()  # a mixed state comes back as it was, module by module
    result = export_model(model, tmp_path / "b", (3, 8, 8), ExportSpec(validate_batches=(2,)), log=quiet)
    assert model.training and model.convs[0].training and not model.heads[1].training
    assert any("train mode" in note for note in result.warnings)
    assert any("train mode" in note for note in result.manifest["notes"])
    model.eval()
    again = export_model(model, tmp_path / "c", (3, 8, 8), ExportSpec(validate_batches=(2,)), log=quiet)
    assert not model.training and not any("train mode" in note for note in again.warnings)


def test_a_pool_sized_from_a_tensor_says_what_fixes_it(tmp_path):
    text = _refused(tmp_path, PoolLikeOther().eval(), (3, 8, 8), match="torch.onnx.export failed")
    assert "constant output size" in text and "batch_size" in text
    # the fix it names works: a static batch exports, validated
    export_model(PoolLikeOther().eval(), tmp_path / "ok", (3, 8, 8), ExportSpec(batch_size=2), log=quiet)


def test_a_wrong_input_shape_names_input_shape(tmp_path):
    text = _refused(tmp_path, FirstConfident().eval(), (4, 8, 8), match="input_shape")
    assert "(1, 4, 8, 8)" in text and "RuntimeError" in text
    _refused(tmp_path, FirstConfident().eval(), (3, 8), match="input_shape (3, 8) is not valid")


def test_a_text_model_given_an_image_shape_is_told_the_inputs_form(tmp_path):
    text = _refused(tmp_path, EarlyExitBert().eval(), (1, 12, 12), match="dict name -> example tensor")
    assert "input_shape" in text


def test_a_batch_that_is_not_first_between_exits_is_refused(tmp_path):
    ids = torch.randint(0, 20, (2, 5))
    _refused(tmp_path, SequenceFirst().eval(), {"ids": ids}, ExportSpec(dynamic_axes={"ids": {1: "sequence"}}),
             match="has its batch on axis 1")


def test_named_inputs_and_dynamic_axes_of_another_form_are_refused(tmp_path):
    batch = text_batch(2, 6)
    model = EarlyExitBert().eval()
    _refused(tmp_path, model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"][:1]},
             match="batch sizes [1, 2]")
    _refused(tmp_path, model, batch, ExportSpec(dynamic_axes={"ids": {1: "sequence"}}), match="names inputs ['ids']")
    _refused(tmp_path, model, batch, ExportSpec(dynamic_axes={"input_ids": {0: "n"}}), match="axis 0 is the batch")
    _refused(tmp_path, model, batch, ExportSpec(batch_size=4), match="batch_size=4")


def test_an_unknown_exporter_or_a_dynamo_opset_below_18_is_refused(tmp_path):
    _refused(tmp_path, AllExits().eval(), (3, 8, 8), ExportSpec(exporter="fx"),
             match="exporter 'fx' is not known")
    _refused(tmp_path, AllExits().eval(), (3, 8, 8), ExportSpec(exporter="dynamo", opset=17), match="opset=18")

"""Build the on-device exit decision graph shipped as ``runtime/decide.onnx``.

    python -m ranet_edge.export.decision_graph [--out runtime/decide.onnx]

The graph is generic: any batch ``n``, any number of classes ``c``, so one file serves every
bundle and the runtime needs no ``onnx`` package (``tests/test_decision_graph.py`` checks the
shipped file is byte for byte what :func:`build` makes). It implements the rule of
``runtime/decision.py`` in float32:

    conf = 1 / sum(exp(logits / T - max(logits / T)))      leave  <=>  conf >= threshold

Inputs: ``logits`` float32 (n, c), ``threshold``, ``temperature`` and ``band`` float32 (1,),
``alive`` bool (n,) (the rows of this bucket still running: padding rows and rows an earlier
exit of the same graph took are False).

Outputs:

- ``summary`` int64 (3 + n): ``[go_on, left, near, order...]``. ``order`` is a permutation of
  the bucket's rows: the rows that go on first (in row order), then the rows that leave here,
  then the dead rows. It is built with CumSum and ScatterElements (positions are a
  permutation, so the scatter has no duplicate index): no NonZero, no Compress, nothing whose
  shape depends on the data, so a CUDA graph can capture it.
- ``probs`` float32 (n, c): the softmax rows, in ``order`` (the rows that leave sit at
  ``go_on .. go_on + left``; their max is the confidence, their argmax the label).
- ``go_on`` bool (n,): the rows that go on, in row order (the ``alive`` of the next exit of
  the same graph).

``near`` counts the alive rows whose confidence lies within a relative ``band`` of the
threshold, where this graph's ``exp`` and sum (other kernels than numpy's) could decide
differently from the runtime's rule: the runtime re-decides those batches on the host with
``runtime.decision`` itself, so the exits are the rule's exactly, ties included.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runtime" / "decide.onnx"


def build() -> onnx.ModelProto:
    """The decision graph (deterministic: the same bytes every time)."""
    f32, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0, np.int64), "axis0"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
    ]
    n = helper.make_node
    nodes = [
        # confidence, exactly as decision.exp_and_total / confidence compute it
        n("Div", ["logits", "temperature"], ["zt"]),
        n("ReduceMax", ["zt"], ["zmax"], axes=[1], keepdims=1),
        n("Sub", ["zt", "zmax"], ["zs"]),
        n("Exp", ["zs"], ["e"]),
        n("ReduceSum", ["e", "axis1"], ["total"], keepdims=1),
        n("Div", ["e", "total"], ["p"]),
        n("Div", ["one_f", "total"], ["conf2"]),
        n("Squeeze", ["conf2", "axis1"], ["conf"]),
        # the rule: leave when conf >= threshold (both float32)
        n("GreaterOrEqual", ["conf", "threshold"], ["reach"]),
        n("And", ["alive", "reach"], ["leave"]),
        n("Not", ["reach"], ["stay"]),
        n("And", ["alive", "stay"], ["go_on"]),
        # rows near the threshold: threshold * (1 - band) <= conf < threshold * (1 + band)
        n("Sub", ["one_f", "band"], ["lo_f"]),
        n("Add", ["one_f", "band"], ["hi_f"]),
        n("Mul", ["threshold", "lo_f"], ["lo"]),
        n("Mul", ["threshold", "hi_f"], ["hi"]),
        n("GreaterOrEqual", ["conf", "lo"], ["above_lo"]),
        n("Less", ["conf", "hi"], ["below_hi"]),
        n("And", ["above_lo", "below_hi"], ["near_band"]),
        n("And", ["alive", "near_band"], ["near_mask"]),
        # order: go-on rows, then the rows leaving, then dead rows (CumSum + ScatterElements)
        n("Cast", ["go_on"], ["g"], to=i64),
        n("Cast", ["leave"], ["x"], to=i64),
        n("Cast", ["near_mask"], ["nr"], to=i64),
        n("Add", ["g", "x"], ["gx"]),
        n("Sub", ["one_i", "gx"], ["d"]),
        n("CumSum", ["g", "axis0"], ["cg"]),
        n("CumSum", ["x", "axis0"], ["cx"]),
        n("CumSum", ["d", "axis0"], ["cd"]),
        # counts: the last element of each running sum (no integer ReduceSum, which not every
        # provider has for int64)
        n("CumSum", ["nr", "axis0"], ["cn"]),
        n("Gather", ["cg", "last"], ["G"], axis=0),
        n("Gather", ["cx", "last"], ["X"], axis=0),
        n("Gather", ["cn", "last"], ["NR"], axis=0),
        n("Sub", ["cg", "one_i"], ["pg"]),
        n("Add", ["G", "cx"], ["gcx"]),
        n("Sub", ["gcx", "one_i"], ["px"]),
        n("Add", ["G", "X"], ["gX"]),
        n("Add", ["gX", "cd"], ["gxcd"]),
        n("Sub", ["gxcd", "one_i"], ["pd"]),
        n("Mul", ["g", "pg"], ["tg"]),
        n("Mul", ["x", "px"], ["tx"]),
        n("Mul", ["d", "pd"], ["td"]),
        n("Add", ["tg", "tx"], ["tgx"]),
        n("Add", ["tgx", "td"], ["pos"]),
        n("Mul", ["g", "zero_i"], ["zeros"]),
        n("Add", ["zeros", "one_i"], ["ones"]),
        n("CumSum", ["ones", "axis0"], ["iota1"]),
        n("Sub", ["iota1", "one_i"], ["iota"]),
        n("ScatterElements", ["zeros", "pos", "iota"], ["order"], axis=0),
        n("Concat", ["G", "X", "NR", "order"], ["summary"], axis=0),
        n("Gather", ["p", "order"], ["probs"], axis=0),
    ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last"))
    graph = helper.make_graph(
        nodes, "ranet_edge_decide",
        [helper.make_tensor_value_info("logits", f32, ["n", "c"]),
         helper.make_tensor_value_info("threshold", f32, [1]),
         helper.make_tensor_value_info("temperature", f32, [1]),
         helper.make_tensor_value_info("band", f32, [1]),
         helper.make_tensor_value_info("alive", b, ["n"])],
        [helper.make_tensor_value_info("summary", i64, ["s"]),
         helper.make_tensor_value_info("probs", f32, ["n", "c"]),
         helper.make_tensor_value_info("go_on", b, ["n"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="ranet-edge", doc_string="on-device early-exit decision (runtime/decision.py's rule)")
    onnx.checker.check_model(model)
    return model


def build_bytes() -> bytes:
    return build().SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(build_bytes())
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

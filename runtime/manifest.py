"""The bundle manifest: the contract between the exporter and the runtime.

A bundle is a directory with ``manifest.json``, one ONNX graph per stage and optionally a
``monolithic.onnx`` baseline and ``thresholds.json`` (operating points, see
``operating_points.py``). :func:`load_manifest` reads and validates it once, without torch,
into a frozen typed view (:class:`Manifest`: :class:`Preprocessing`, :class:`GraphEntry`,
:class:`ExitEntry`, :class:`MonolithicEntry`) that the rest of the runtime reads; a missing or
mistyped field is one :class:`~ranet_edge.errors.BundleError` naming it. The exporter and
the converter write the manifest as a plain dict with :func:`write_json_atomic`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

from ._fields import (
    Fields,
    count,
    dims,
    is_dict,
    is_list,
    is_str,
    or_none,
    positive,
    short,
    strings,
    three_numbers,
    three_positive,
)
from .files import check_assets, replace_dir, resolve_inside, sha256_file, write_json_atomic
from .tensors import InputInfo, TensorInfo, parse_inputs, parse_tensor

TYPE_CHECKING = False
if TYPE_CHECKING:  # preprocess imports numpy; reading a manifest does not need it
    from .preprocess import PreprocessSpec

__all__ = [
    "FORMAT", "MANIFEST", "SCHEMA_VERSION", "CompiledGraph", "ExitEntry", "GraphEntry", "InputInfo", "Manifest",
    "MonolithicEntry", "Preprocessing", "TensorInfo", "load_manifest",
    # from .files, for the writers (export/), which import them from here
    "replace_dir", "sha256_file", "write_json_atomic",
]

FORMAT = "ranet-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CompiledGraph:
    """A graph compiled ahead of time for one provider (an EPContext model: QNN's context
    binary, embedded), loaded instead of the graph when that provider runs the chain."""

    provider: str  # e.g. "QNNExecutionProvider"
    path: str  # relative to the bundle
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the chain and the exits it carries."""

    path: str  # relative to the bundle
    sha256: str
    inputs: tuple[str, ...]
    logits: tuple[str, ...]  # one per exit it carries, in exit order
    cache_outputs: tuple[str, ...]
    exits: tuple[int, ...]
    flops: int | None = None  # FLOPs of this graph alone, per sample
    bytes: int | None = None  # file size
    tensors: tuple[tuple[str, TensorInfo], ...] = ()  # its inputs and cached outputs, by name
    compiled: tuple[CompiledGraph, ...] = ()  # ahead-of-time compiled forms, one per provider

    def tensor(self, name: str) -> TensorInfo | None:
        """What the manifest records of tensor ``name`` (None when it records nothing)."""
        return dict(self.tensors).get(name)

    def compiled_path(self, provider: str | None) -> str | None:
        """The path of this graph compiled for ``provider``, None when the bundle has none."""
        return next((c.path for c in self.compiled if c.provider == provider), None)


@dataclass(frozen=True)
class ExitEntry:
    """One exit: where it is computed and what reaching it costs (per sample)."""

    index: int  # 0-based, in chain order
    graph: str  # path of the graph carrying it
    logits: str  # the output holding its logits
    flops: int  # cumulative to this exit, counted as the papers count (the official figure)
    stage_flops: int  # the official count of this exit's own stage
    run_flops: int  # what a sample leaving here pays in this chain (whole graphs run so far)
    params: int  # cumulative parameters to this exit
    cache_bytes_per_sample: int  # feature maps its graph hands on
    # Of ``flops``: work no exit's logits depend on (MSDNet's last blocks compute finer scales
    # that no classifier reads), cumulative. The official counter counts it; the graphs do
    # not hold it, so no chain pays it. 0 in bundles written before the field existed.
    dead_flops: int = 0
    num_classes: int | None = None  # its logits' width (a manifest that records none: the top-level num_classes)


@dataclass(frozen=True)
class MonolithicEntry:
    """The whole network as one graph (the baseline the chain is measured against)."""

    path: str
    sha256: str
    inputs: tuple[str, ...]
    logits: tuple[str, ...]  # every exit's logits, in exit order
    bytes: int | None = None


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB images become the network input, and that input's name and shape."""

    input: str  # the first graph's image input
    shape: tuple[int | None, ...]  # NCHW; the batch axis is None in a dynamic-batch bundle
    size: int  # side of the square network input
    mean: tuple[float, float, float]  # per RGB channel, on the [0, 1] scale
    std: tuple[float, float, float]
    resize: int | None  # shorter side resized to this before the centre crop (None: fit to size)
    layout: str = "NCHW"
    color: str = "RGB"
    dtype: str = "float32"
    scale: str = "uint8 / 255"  # how pixels reach [0, 1] before mean and std apply

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape (the shape without its batch axis)."""
        return tuple(int(d) for d in self.shape[1:])

    @property
    def spec(self) -> PreprocessSpec:
        """What :func:`ranet_edge.runtime.preprocess.preprocess` takes."""
        from .preprocess import PreprocessSpec

        return PreprocessSpec(self.size, self.mean, self.std, self.resize, self.layout, self.color, self.dtype)


@dataclass(frozen=True)
class Manifest:
    """A loaded bundle's manifest, validated: read the typed fields; ``data`` is the raw
    JSON, for writers that copy and change it (the converter) and for free-form metadata."""

    root: Path
    data: dict  # the raw manifest (do not change it: the typed fields were read from it)
    graphs: tuple[GraphEntry, ...]
    exits: tuple[ExitEntry, ...]
    preprocessing: Preprocessing | None  # None: a bundle of named, non-image inputs (text)
    num_classes: int
    class_names: tuple[str, ...] | None
    monolithic: MonolithicEntry | None  # None: exported without --monolithic
    granularity: str  # "exit" (one graph per exit) or "subnetwork"
    precision: str  # "fp32", "fp16" or "int8-qdq"
    graph_format: str  # "onnx" or "ort"
    batch_size: int | None  # static batch of every graph; None: dynamic
    opset: int | None
    model: dict | None  # free-form description of the source model (architecture, config, flags)
    mobile_report: dict | None  # ort bundles: share of nodes each mobile provider takes, per graph
    #: The network inputs, in the order the first graph reads them (an image bundle: its one image).
    inputs: tuple[InputInfo, ...] = ()

    @property
    def num_exits(self) -> int:
        """How many exits the chain has (K), each graph carrying one or more."""
        return len(self.exits)

    @property
    def input_name(self) -> str:
        """The name of the first network input (an image bundle's image)."""
        return self.inputs[0].name if self.inputs else self.preprocessing.input  # type: ignore[union-attr]

    def exit_costs(self, name: str) -> list[int]:
        """One cost per exit, in exit order: ``flops``, ``stage_flops``, ``run_flops``,
        ``params``, ``cache_bytes_per_sample`` or ``dead_flops``.

        Raises:
            ValueError: when ``name`` is none of these.
        """
        if name not in (*_COSTS, *_OPTIONAL_COSTS):
            raise ValueError(f"unknown exit cost {name!r}; use one of {', '.join((*_COSTS, *_OPTIONAL_COSTS))}")
        return [getattr(e, name) for e in self.exits]

    def exit_field(self, name: str) -> list:
        """Former name of :meth:`exit_costs` (any :class:`ExitEntry` field)."""
        return [getattr(e, name) for e in self.exits]

    def graph_of(self, exit_index: int) -> GraphEntry:
        """The graph carrying exit ``exit_index``.

        Raises:
            ValueError: when no graph carries it (``exit_index`` is not ``0..num_exits - 1``).
        """
        for graph in self.graphs:
            if exit_index in graph.exits:
                return graph
        raise ValueError(f"exit {exit_index!r} is not in this bundle (exits 0..{self.num_exits - 1})")


_COSTS = ("flops", "stage_flops", "run_flops", "params", "cache_bytes_per_sample")
# Optional costs, added within schema version 1: absent in older bundles, read as 0.
_OPTIONAL_COSTS = ("dead_flops",)


def load_manifest(bundle: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and validate ``bundle/manifest.json``; with ``verify`` also check the sha256 of
    every graph file it lists (a read of each).

    Raises:
        BundleError: when the manifest is missing, not JSON, of another format or schema
            version, a field is missing, mistyped or contradicts another, or a listed file is
            missing, outside the bundle or (``verify``) fails its sha256; the message names it.
    """
    root = Path(bundle)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle (no {MANIFEST}); create one with `ranet-edge export`")
    try:
        data = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a ranet-edge bundle manifest (format != {FORMAT!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{mpath} has schema_version {data.get('schema_version')!r}; this runtime reads "
                          f"version {SCHEMA_VERSION}: re-export with this ranet-edge version")
    top = Fields(mpath, data, "")
    exits_raw = top("exits", is_list, "a list of exit objects")
    graphs = tuple(_graph(mpath, g, i) for i, g in enumerate(top("graphs", is_list, "a list of graph objects")))
    pre_raw = top("preprocessing", lambda v: v is None or is_dict(v), "an object, or null for a non-image bundle")
    pre = _preprocessing(Fields(mpath, pre_raw, "preprocessing")) if pre_raw is not None else None
    inputs = parse_inputs(mpath, data.get("inputs"), pre)
    if not exits_raw or [k for g in graphs for k in g.exits] != list(range(len(exits_raw))):
        raise BundleError(f"{mpath}: graphs must carry exits 0..{len(exits_raw) - 1} in order")
    num_classes = top("num_classes", positive, "a whole number >= 1")
    exits = _exits(mpath, exits_raw, graphs, num_classes)
    names = top("class_names", or_none(strings), "null or a list of names", None)
    if names is not None and len(names) != num_classes:
        raise BundleError(f"{mpath}: class_names has {len(names)} names for num_classes={num_classes}; "
                          "re-export the bundle")
    mono_raw = top("monolithic", or_none(is_dict), "null or an object", None)
    mono = _monolithic(Fields(mpath, mono_raw, "monolithic")) if mono_raw else None
    for entry in (*graphs, *([mono] if mono else []), *(c for g in graphs for c in g.compiled)):
        path = resolve_inside(root, entry.path, mpath)
        if not path.is_file():
            raise BundleError(f"graph {path.name} listed in {mpath} is missing; re-export the bundle")
        if verify:
            got = sha256_file(path)
            if got != entry.sha256:
                raise BundleError(f"graph {path.name} fails its sha256 check (manifest {entry.sha256[:12]}..., "
                                  f"file {got[:12]}...): it was modified; re-export the bundle")
    check_assets(root, mpath, data.get("assets", {}), verify)
    return Manifest(
        root, data, graphs, exits, pre, num_classes, tuple(names) if names is not None else None, mono,
        granularity=top("granularity", is_str, '"exit" or "subnetwork"'),
        precision=top("precision", is_str, 'a precision like "fp32"', "fp32"),
        graph_format=top("graph_format", is_str, '"onnx" or "ort"', "onnx"),
        batch_size=top("batch_size", or_none(positive), "null or a whole number >= 1", None),
        opset=top("opset", or_none(positive), "null or an opset number", None),
        model=top("model", or_none(is_dict), "null or an object", None),
        mobile_report=top("mobile_report", or_none(is_dict), "null or an object", None),
        inputs=inputs,
    )


# --------------------------------------------------------------------------- entries
def _graph(mpath: Path, raw: Any, i: int) -> GraphEntry:
    f = Fields(mpath, raw, f"graphs[{i}]")
    tensors = [(name, parse_tensor(mpath, t, f"graphs[{i}].tensors[{name!r}]"))
               for name, t in f("tensors", is_dict, "an object of tensor descriptions", {}).items()]
    entry = GraphEntry(
        f("path", is_str, "a path relative to the bundle"), f("sha256", is_str, "a sha256 hex digest"),
        tuple(f("inputs", strings, "a list of tensor names")), tuple(f("logits", strings, "a list of tensor names")),
        tuple(f("cache_outputs", strings, "a list of tensor names")),
        tuple(f("exits", lambda v: isinstance(v, list) and all(count(k) for k in v), "a list of exit indices")),
        f("flops", or_none(count), "a whole number >= 0", None), f("bytes", or_none(count), "a size in bytes", None),
        tuple(tensors), _compiled(mpath, f("compiled", is_dict, "an object: provider -> compiled graph", {}), i))
    if len(entry.logits) != len(entry.exits):
        raise BundleError(f"{mpath}: graphs[{i}] names {len(entry.logits)} logits for {len(entry.exits)} exits; "
                          "re-export the bundle")
    return entry


def _compiled(mpath: Path, raw: dict, i: int) -> tuple[CompiledGraph, ...]:
    out = []
    for provider, c in raw.items():
        cf = Fields(mpath, c, f"graphs[{i}].compiled[{provider!r}]")
        out.append(CompiledGraph(provider, cf("path", is_str, "a path relative to the bundle"),
                                 cf("sha256", is_str, "a sha256 hex digest"),
                                 cf("bytes", or_none(count), "a size in bytes", None)))
    return tuple(out)


def _exits(mpath: Path, exits: list, graphs: tuple[GraphEntry, ...], num_classes: int) -> tuple[ExitEntry, ...]:
    """``exits[k]`` repeats what ``graphs`` says of the graph carrying exit k (its path,
    sha256, inputs, cached outputs, logits name): a driver may read either, so every copy
    present must agree with ``graphs``, the one the runtime uses. The costs are its own."""
    carrier = {k: (i, g, j) for i, g in enumerate(graphs) for j, k in enumerate(g.exits)}
    out = []
    for k, e in enumerate(exits):
        f = Fields(mpath, e, f"exits[{k}]")
        i, g, j = carrier[k]
        copies = {"index": k, "graph": g.path, "sha256": g.sha256, "inputs": list(g.inputs),
                  "cache_outputs": list(g.cache_outputs), "logits": g.logits[j]}
        for name, want in copies.items():
            if name in e and (list(e[name]) if isinstance(e[name], (list, tuple)) else e[name]) != want:
                raise BundleError(f"{mpath}: exits[{k}].{name} is {short(e[name])} but graphs[{i}] says "
                                  f"{short(want)}; the manifest contradicts itself: re-export the bundle")
        costs = [f(name, count, "a whole number >= 0") for name in _COSTS]
        optional = [f(name, count, "a whole number >= 0", 0) for name in _OPTIONAL_COSTS]
        classes = f("num_classes", positive, "a whole number >= 1", num_classes)
        if k == len(exits) - 1 and classes != num_classes:
            raise BundleError(f"{mpath}: the last exit has {classes} classes, num_classes says {num_classes}; re-export")
        entry = ExitEntry(k, g.path, g.logits[j], *costs, *optional, classes)
        if entry.dead_flops > entry.flops:
            raise BundleError(f"{mpath}: exits[{k}].dead_flops is {entry.dead_flops}, more than its flops "
                              f"{entry.flops}; the manifest contradicts itself: re-export the bundle")
        out.append(entry)
    return tuple(out)


def _preprocessing(f: Fields) -> Preprocessing:
    return Preprocessing(
        input=f("input", is_str, "the name of the image input"),
        shape=tuple(f("shape", lambda v: dims(v) and None not in v[1:], "a list of sizes, the batch first "
                      "(null: dynamic)")),
        size=f("size", positive, "the side of the square input in pixels"),
        mean=tuple(f("mean", three_numbers, "three numbers (RGB, on the [0, 1] scale)")),
        std=tuple(f("std", three_positive, "three numbers > 0")),
        resize=f("resize", or_none(positive), "null or a side in pixels", None),
        layout=f("layout", is_str, '"NCHW"', "NCHW"), color=f("color", is_str, '"RGB"', "RGB"),
        dtype=f("dtype", is_str, '"float32"', "float32"), scale=f("scale", is_str, '"uint8 / 255"', "uint8 / 255"))


def _monolithic(f: Fields) -> MonolithicEntry:
    return MonolithicEntry(
        f("path", is_str, "a path relative to the bundle"), f("sha256", is_str, "a sha256 hex digest"),
        tuple(f("inputs", strings, "a list of tensor names")), tuple(f("logits", strings, "a list of tensor names")),
        f("bytes", or_none(count), "a size in bytes", None))

"""The bundle manifest: the contract between the exporter and the runtime.

A bundle is a directory with ``manifest.json``, one ONNX graph per stage and optionally a
``monolithic.onnx`` baseline and ``thresholds.json`` (operating points). This module reads
and validates it without torch; the exporter writes it with :func:`write_json_atomic`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

FORMAT = "ranet-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the chain and the exits it carries."""

    path: str  # relative to the bundle
    sha256: str
    inputs: tuple[str, ...]
    logits: tuple[str, ...]  # one per exit it carries, in exit order
    cache_outputs: tuple[str, ...]
    exits: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict  # the raw manifest
    graphs: tuple[GraphEntry, ...]

    @property
    def num_exits(self) -> int:
        return len(self.data["exits"])

    @property
    def input_name(self) -> str:
        return self.data["preprocessing"]["input"]

    def exit_field(self, name: str) -> list:
        return [e[name] for e in self.data["exits"]]


def sha256_file(path: Path) -> str:
    import hashlib  # here, not at import time: see runtime/__init__.py

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_inside(root: Path, rel: Any) -> Path:
    """``root/rel`` if ``rel`` is a relative path that stays inside ``root``."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise BundleError(f"graph path {rel!r} in {root / MANIFEST} must be relative to the bundle")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"graph path {rel!r} escapes the bundle directory {root}; refusing to load it")
    return path


def load_manifest(bundle: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and validate ``bundle/manifest.json``; with ``verify`` also check every sha256."""
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
    try:
        exits = data["exits"]
        graphs_raw = data["graphs"]
        data["preprocessing"]["input"]
        graphs = tuple(
            GraphEntry(g["path"], g["sha256"], tuple(g["inputs"]), tuple(g["logits"]),
                       tuple(g["cache_outputs"]), tuple(g["exits"]))
            for g in graphs_raw
        )
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{mpath} is missing field {exc}; re-export the bundle") from None
    if not exits or [k for g in graphs for k in g.exits] != list(range(len(exits))):
        raise BundleError(f"{mpath}: graphs must carry exits 0..{len(exits) - 1} in order")
    extra = [data["monolithic"]] if data.get("monolithic") else []
    for entry in list(graphs) + extra:
        path = resolve_inside(root, entry.path if isinstance(entry, GraphEntry) else entry.get("path"))
        if not path.is_file():
            raise BundleError(f"graph {path.name} listed in {mpath} is missing; re-export the bundle")
        if verify:
            want = entry.sha256 if isinstance(entry, GraphEntry) else entry.get("sha256")
            got = sha256_file(path)
            if got != want:
                raise BundleError(f"graph {path.name} fails its sha256 check (manifest {str(want)[:12]}..., "
                                  f"file {got[:12]}...): it was modified; re-export the bundle")
    _check_exit_copies(mpath, exits, graphs)
    return Manifest(root, data, graphs)


def _check_exit_copies(mpath: Path, exits: list, graphs: tuple[GraphEntry, ...]) -> None:
    """``exits[k]`` repeats what ``graphs`` says of the graph carrying exit k (its path,
    sha256, inputs, cached outputs, logits name): a driver may read either, so every copy
    present must agree with ``graphs``, the one the runtime uses."""
    carrier = {k: (i, g, j) for i, g in enumerate(graphs) for j, k in enumerate(g.exits)}
    for k, e in enumerate(exits):
        if not isinstance(e, dict):
            raise BundleError(f"{mpath}: exits[{k}] is not an object; re-export the bundle")
        i, g, j = carrier[k]
        copies = {"index": k, "graph": g.path, "sha256": g.sha256, "inputs": list(g.inputs),
                  "cache_outputs": list(g.cache_outputs), "logits": g.logits[j]}
        for name, want in copies.items():
            if name in e and (list(e[name]) if isinstance(e[name], (list, tuple)) else e[name]) != want:
                raise BundleError(f"{mpath}: exits[{k}].{name} is {_short(e[name])} but graphs[{i}] says "
                                  f"{_short(want)}; the manifest contradicts itself: re-export the bundle")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write strict JSON (no NaN or Infinity: ValueError; sorted keys, stable formatting) to a
    temporary file and rename it."""
    import tempfile  # writers only; the runtime's import stays light

    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``, replacing what was there."""
    import shutil

    if out.exists():
        trash = out.with_name(f".{out.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    os.chmod(out, 0o755)

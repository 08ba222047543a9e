"""Loading checkpoints: ours, the official trainers' (RANet or MSDNet), or a bare state_dict.

Every load goes through ``torch.load(..., weights_only=True)``, so nothing in the file can
run code. Official checkpoints carry no architecture flags: the caller gives a preset or
flags, or the architecture is worked out from tensor names and shapes: which network it is
from the keys (:func:`detect_arch`), its flags from the shapes
(:func:`~ranet_edge.ranet_infer.infer_config` for RANet,
:func:`~ranet_edge.msdnet_infer.infer_msdnet_config` for MSDNet).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .architectures import NAMES, ArchConfig, config_from_dict
from .errors import CheckpointError, require
from .ranet_infer import infer_config

FORMAT = "ranet-edge-checkpoint"


@dataclass
class LoadedCheckpoint:
    """A model with its weights and where its architecture came from."""

    model: Any  # ranet_edge.model.RANet or MSDNet, in eval mode
    config: ArchConfig
    layout: str  # "ranet-edge", "official" or "state_dict"
    config_source: str  # "checkpoint", "preset", "flags" or "inferred"
    meta: dict = field(default_factory=dict)  # epoch, best accuracy, class names, ...


def not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """What ``path`` is instead, with the command to run, when it is a bundle, a bundle's
    manifest or an ONNX/ORT graph rather than a checkpoint; None otherwise (a missing path
    included). Torch-free; it reads at most 16 bytes of the file.

    Raises:
        OSError: ``path`` is a file that cannot be opened for reading.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return f"{path} is a ranet-edge bundle, not a checkpoint; run `ranet-edge info {path}` to see its graphs"
        return f"{path} is a directory, not a checkpoint; pass the path of a .pth/.pt file"
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        head = fh.read(16)
    bundle = path.parent if (path.parent / "manifest.json").is_file() else None
    instead = (f"run `ranet-edge info {bundle}` for its bundle" if bundle else
               "`ranet-edge info BUNDLE` describes the graphs of a bundle, `ranet-edge export CKPT` makes one")
    if path.name == "manifest.json" and bundle:
        return f"{path} is a bundle's manifest, not a checkpoint; run `ranet-edge info {bundle}`"
    if head[4:8] == b"ORTM":  # the flatbuffer file identifier of ONNX Runtime's ORT format
        return f"{path} is an ONNX Runtime (ORT format) graph, not a PyTorch checkpoint; {instead}"
    # ModelProto starts with ir_version (field 1, varint) then another field; zip/pickle never do
    if path.suffix == ".onnx" or (len(head) > 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (
            0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)):
        return f"{path} is an ONNX graph, not a PyTorch checkpoint; {instead}"
    return None


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` on the CPU: the dict the file holds (a
    checkpoint dict or a bare state_dict), nothing of it interpreted yet.

    Raises:
        CheckpointError: ``path`` is a bundle, a manifest or an ONNX/ORT graph (the message
            names the command to run instead), does not exist, is not a file ``torch.save``
            wrote, holds objects only a full unpickle could build (refused: that could run
            code), or holds something other than a mapping.
        MissingExtraError: torch is not installed (the ``export`` extra).
    """
    instead = not_a_checkpoint(path)
    if instead:
        raise CheckpointError(instead)
    torch = require("torch", "export")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pth/.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        raise CheckpointError(
            f"{path} holds objects that only a full unpickle could build ({first[:160]}); "
            "refusing to run code from a checkpoint: re-save it as a plain state_dict"
        ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for non-checkpoints
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:120]}); "
            "pass a file written by torch.save"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state_dict")
    return dict(obj)


def split_checkpoint(obj: Mapping) -> tuple[str, dict, dict]:
    """(layout, state_dict without ``module.``, metadata) of what
    :func:`read_checkpoint_file` returned.

    The layout is ``"ranet-edge"`` (ours: ``format`` is :data:`FORMAT`, the weights under
    ``model``, everything else metadata), ``"official"`` (the weights under ``state_dict``;
    ``epoch``, ``arch`` and ``best_prec1`` kept as metadata) or ``"state_dict"`` (the mapping
    is the weights).

    Raises:
        CheckpointError: there is no non-empty mapping of names to tensors where the layout
            puts the weights.
        MissingExtraError: torch is not installed (the ``export`` extra).
    """
    torch = require("torch", "export")
    if obj.get("format") == FORMAT:
        layout, state, meta = "ranet-edge", obj.get("model"), {k: v for k, v in obj.items() if k != "model"}
    elif "state_dict" in obj:
        layout, state = "official", obj["state_dict"]
        meta = {k: obj[k] for k in ("epoch", "arch", "best_prec1") if k in obj}
    else:
        layout, state, meta = "state_dict", obj, {}
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            "the file has no state_dict of tensors; expected the official "
            "{'state_dict': ...} layout, a bare state_dict, or a ranet-edge checkpoint"
        )
    return layout, {k.removeprefix("module."): v for k, v in state.items()}, meta


def load_checkpoint(path: str | os.PathLike, config: ArchConfig | None = None,
                    config_source: str = "flags", arch: str | None = None) -> LoadedCheckpoint:
    """Load ``path`` into its model, in eval mode.

    ``config`` overrides what the file says or implies (``config_source`` records where it came
    from: ``"flags"`` or ``"preset"``); without it, our checkpoints give their stored config and
    the others are inferred from the tensor names and shapes (docs/reference/ranet.md, "An
    official checkpoint with no flags"). ``arch`` ("ranet"/"msdnet") overrides the
    architecture detected from the keys.

    Raises:
        CheckpointError: the file cannot be read as a checkpoint (see
            :func:`read_checkpoint_file`); it holds a RANet where ``config`` describes an MSDNet
            or the reverse; no architecture can be inferred from it; or its keys or shapes do
            not match the architecture (the message names the first ones).
        ConfigError: the stored or given configuration is invalid, or describes a network
            whose official forward cannot run.
        MissingExtraError: torch is not installed (the ``export`` extra).
    """
    from .model import build_model

    layout, state, meta = split_checkpoint(read_checkpoint_file(path))
    source = config_source
    if config is None:
        if layout == "ranet-edge":
            config, source = config_from_dict(meta["config"]), "checkpoint"
        else:
            config, source = infer_arch_config(state, arch), "inferred"
    else:
        found = detect_arch(state, strict=False)
        if found is not None and found != config.arch:
            raise CheckpointError(
                f"the checkpoint holds a {NAMES[found]} but the flags describe a {NAMES[config.arch]}; "
                f"pass --arch {found} with its flags, or omit the flags to infer them")
    model = build_model(config)
    check_state_dict(model.state_dict(), state, config, source)
    model.load_state_dict(state)
    model.eval()
    return LoadedCheckpoint(model, config, layout, source, meta)


def detect_arch(state: Mapping, strict: bool = True) -> str | None:
    """"ranet" or "msdnet", told apart by the top-level modules: ``FirstLayer.*`` keys are a
    RANet's, ``blocks.*`` with ``classifier.*`` an MSDNet's. None if neither, unless ``strict``.

    Raises:
        CheckpointError: ``strict`` and the keys are neither a RANet's nor an MSDNet's.
    """
    from .msdnet_infer import is_msdnet_state

    if any(k.startswith("FirstLayer.") for k in state):
        return "ranet"
    if is_msdnet_state(state):
        return "msdnet"
    if strict:
        raise CheckpointError("not a RANet state_dict (no FirstLayer/scale_flows keys) nor an MSDNet one "
                              "(no blocks/classifier keys); give the checkpoint of one of them")
    return None


def infer_arch_config(state: Mapping, arch: str | None = None) -> ArchConfig:
    """The architecture's config from the keys and shapes; ``arch`` skips the detection.

    Raises:
        CheckpointError: the keys are neither a RANet's nor an MSDNet's, a key the inference
            needs is missing, or no candidate architecture has exactly these keys and shapes.
    """
    from .msdnet_infer import infer_msdnet_config

    arch = arch or detect_arch(state)
    return infer_msdnet_config(state) if arch == "msdnet" else infer_config(state)


def check_state_dict(expected: Mapping, given: Mapping, config: ArchConfig, source: str) -> None:
    """Check the keys and shapes of ``given`` against the model's ``expected`` state_dict;
    ``source`` (where ``config`` came from) picks the hint the error gives.

    Raises:
        CheckpointError: one line naming the first missing, unexpected or misshapen keys, the
            architecture's official flags, and what to give instead.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (first: {', '.join(items[:2])})")
    hint = ("give the official flags it was trained with, or a --preset"
            if source != "inferred" else "the architecture could not be inferred; give its official flags")
    raise CheckpointError(
        f"checkpoint does not match the {source} {NAMES[config.arch]} architecture [{config.official_flags()}]: "
        f"{'; '.join(parts)}; {hint}, or omit them to infer the architecture"
    )

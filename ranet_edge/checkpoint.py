"""Loading checkpoints: ours, the official trainers' (RANet or MSDNet), or a bare state_dict.

Every load goes through ``torch.load(..., weights_only=True)``, so nothing in the file can
run code. Official checkpoints carry no architecture flags: the caller gives a preset or
flags, or the architecture is worked out from tensor names and shapes: which network it is
from the keys (:func:`detect_arch`), its flags from the shapes (:func:`infer_config` for
RANet, :func:`~ranet_edge.msdnet_infer.infer_msdnet_config` for MSDNet).
"""
from __future__ import annotations

import itertools
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

from .architectures import NAMES, ArchConfig, config_from_dict
from .config import RANetConfig
from .errors import CheckpointError, ConfigError, require

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
    manifest or an ONNX/ORT graph rather than a checkpoint; None otherwise. Torch-free."""
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
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError."""
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
    """Return (layout, state_dict without ``module.``, metadata)."""
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
    """Load ``path`` into its model; ``config`` overrides what the file says or implies, and
    ``arch`` ("ranet"/"msdnet") overrides the architecture detected from the keys."""
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
    """"ranet" or "msdnet", told apart by the top-level modules (None if neither, unless strict)."""
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
    """The architecture's config from the keys and shapes; ``arch`` skips the detection."""
    from .msdnet_infer import infer_msdnet_config

    arch = arch or detect_arch(state)
    return infer_msdnet_config(state) if arch == "msdnet" else infer_config(state)


def check_state_dict(expected: Mapping, given: Mapping, config: ArchConfig, source: str) -> None:
    """Raise a one-line CheckpointError naming the first missing/unexpected/misshapen keys."""
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


# ------------------------------------------------------------------------- inference
_BLOCK = re.compile(r"scale_flows\.(\d+)\.(\d+)\.")
_LAYER = re.compile(r"scale_flows\.(\d+)\.(\d+)\.layers\.(\d+)\.")


def infer_config(state: Mapping) -> RANetConfig:
    """Work the official flags out from state_dict names and shapes.

    Every derived quantity is then checked by building the candidate architecture on the
    meta device and comparing every key and shape; the first exact match wins.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: key {key} is missing; "
                                  "give the official flags or a --preset")
        return tuple(state[key].shape)

    stem = sorted({int(m.group(1)) for k in state if (m := re.match(r"FirstLayer\.layers\.(\d+)\.", k))})
    if not stem:
        raise CheckpointError("not a RANet state_dict (no FirstLayer.layers.* keys); "
                              "give the checkpoint of a RANet model")
    imagenet = "FirstLayer.layers.0.0.weight" in state
    n_scales = len(stem)
    num_classes = shape("classifier.0.linear.weight")[0]
    data = "ImageNet" if imagenet else ("cifar100" if num_classes == 100 else "cifar10")
    stem_out = [shape(f"FirstLayer.layers.{i}.{'0' if (imagenet and i == 0) else 'net.0'}.weight")[0]
                for i in range(n_scales)][::-1]
    blocks: dict[int, dict[int, int]] = {}
    for k in state:
        if m := _LAYER.match(k):
            i, j, layer = map(int, m.groups())
            blocks.setdefault(i, {}).setdefault(j, 0)
            blocks[i][j] = max(blocks[i][j], layer + 1)
    counts = [len(blocks.get(i, {})) for i in range(n_scales)]
    if not counts or counts[0] == 0:
        raise CheckpointError("not a RANet state_dict (no scale_flows.0 blocks)")
    growth = []
    for i in range(n_scales):
        pre = f"scale_flows.{i}.{len(blocks[i]) - 1}.layers.0."
        if f"{pre}conv_up.net.3.weight" in state:
            growth.append(shape(f"{pre}conv_up.net.3.weight")[0] + shape(f"{pre}conv_normal.net.3.weight")[0])
        else:
            growth.append(shape(f"{pre}conv_normal.net.3.weight")[0])
    n_ch, g_rate = _gcd_all(stem_out), _gcd_all(growth)
    gr_candidates = {tuple(c // n_ch for c in stem_out), tuple(g // g_rate for g in growth)}
    # Bottleneck width is min(n_in, bn*out): exact where some layer is narrower than its
    # input, otherwise only bounded below (any bn above the bound builds the same shapes).
    bn_exact: list[int | None] = []
    bn_floor: list[int] = []
    for i in range(n_scales):
        exact, need = None, 1
        for j in sorted(blocks[i]):
            for layer in range(blocks[i][j]):
                w = shape(f"scale_flows.{i}.{j}.layers.{layer}.conv_normal.net.0.weight")
                out = shape(f"scale_flows.{i}.{j}.layers.{layer}.conv_normal.net.3.weight")[0]
                if w[0] < w[1]:
                    exact = w[0] // out
                need = max(need, -(-w[1] // out))
        bn_exact.append(exact)
        bn_floor.append(need)
    trans = [[j for j in sorted(blocks[i]) if f"scale_flows.{i}.{j}.trans.net.0.weight" in state]
             for i in range(n_scales)]
    # compress_factor and reduction only show through floor(x * n) == out: collect every
    # such (n, out) pair and try values inside the interval they all allow.
    cf_pairs, red_pairs = [], []
    for k in state:
        m = _LAYER.match(k)
        if m and k.endswith("conv_up.net.3.weight"):
            i, j, layer = map(int, m.groups())
            cf_pairs.append((growth[i], shape(k)[0]))
            inner, n_low = shape(f"scale_flows.{i}.{j}.layers.{layer}.conv_up.net.0.weight")[:2]
            if inner < n_low and bn_exact[i - 1] is None:  # conv_up uses the previous bnFactor
                bn_exact[i - 1] = inner // shape(k)[0]
        elif (m := _BLOCK.match(k)) and k.endswith("conv_last.net.0.weight"):
            i, j = map(int, m.groups())
            last = blocks[i][j] - 1
            n_out = shape(f"scale_flows.{i}.{j}.layers.{last}.conv_normal.net.0.weight")[1] + growth[i]
            cf_pairs.append((n_out, shape(k)[0]))
        elif (m := _BLOCK.match(k)) and k.endswith("trans.net.0.weight"):
            red_pairs.append(shape(k)[1::-1])
    cf_options = _floor_candidates(cf_pairs, 0.25)
    red_options = _floor_candidates(red_pairs, 0.5)
    # Strides are not in the weights: try every rank sequence, strictly increasing first.
    scale_options = [tuple(itertools.accumulate((1,) + d))
                     for d in itertools.product((1, 0), repeat=n_scales - 1)]
    step = blocks[0][0]
    expected_shapes = {k: tuple(v.shape) for k, v in state.items()}
    tried = 0
    for gr, scales, mode, cf, red in itertools.product(
            sorted(gr_candidates, reverse=True), scale_options, ("even", "lg"),
            cf_options, red_options):
        if any(c % f or g % f for c, g, f in zip(stem_out, growth, gr, strict=False)):
            continue
        try:
            cfg = RANetConfig(
                data=data, nBlocks=counts[0],
                block_step=(counts[1] - counts[0]) if n_scales > 1 else 2,
                nChannels=stem_out[0] // gr[0], growthRate=growth[0] // gr[0], grFactor=gr,
                bnFactor=tuple(b if b is not None else max(f, g) for b, f, g in zip(bn_exact, bn_floor, gr, strict=False)),
                scale_list=scales, step=step, stepmode=mode,
                compress_factor=cf, reduction=red, num_classes=num_classes,
            )
        except ConfigError:
            continue
        plan = cfg.plan()
        if [[b.index - 1 for b in plan if b.subnet == i and b.trans] for i in range(n_scales)] != trans:
            continue
        if [[b.layers for b in plan if b.subnet == i] for i in range(n_scales)] != \
                [[blocks[i][j] for j in sorted(blocks[i])] for i in range(n_scales)]:
            continue
        tried += 1
        if _meta_shapes(cfg) == expected_shapes:
            return cfg
    raise CheckpointError(
        f"could not infer the architecture from the state_dict ({tried} candidates checked); "
        "give the official flags (--step, --stepmode, --scale-list, ...) or a --preset"
    )


def _floor_candidates(pairs: list[tuple[int, int]], default: float) -> list[float]:
    """Values x with floor(x * n) == out for every (n, out): the default if allowed, then
    round values, then the middle of the allowed interval."""
    if not pairs:
        return [default]
    lo = max(out / n for n, out in pairs)
    hi = min((out + 1) / n for n, out in pairs)
    ok = [v for v in [default] + [k / 100 for k in range(1, 100)] if lo <= v < hi and 0 < v < 1]
    mid = round((lo + hi) / 2, 6)
    return list(dict.fromkeys(ok[:3] + ([mid] if lo <= mid < hi and 0 < mid < 1 else [])))


def _gcd_all(values: list[int]) -> int:
    out = 0
    for v in values:
        out = gcd(out, v)
    return out


def _meta_shapes(config: RANetConfig) -> dict[str, tuple[int, ...]]:
    torch = require("torch", "export")
    from .model import RANet

    with torch.device("meta"):
        model = RANet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

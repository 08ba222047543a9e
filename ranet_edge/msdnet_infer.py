"""Working the official MSDNet flags out of a state_dict's names and shapes.

Official MSDNet checkpoints store no flags. Everything that changes a tensor shape or a key
is recovered: data/classes (the stem and the linear layers), nBlocks (the classifiers),
base/step/stepmode (dense layers per block), nChannels and grFactor (the first layer and
the growth per scale), growthRate, bottleneck (the 1x1 convs), bnFactor (the bottleneck
widths), prune and reduction (where the transitions are and their widths). Each candidate
is built on the meta device and compared key for key; the first exact match wins.

Two flags can leave no trace: ``bnFactor`` without a bottleneck, and ``reduction`` in a
network that has no transition. Any value then builds the same model; the defaults are used.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from .errors import CheckpointError, ConfigError, require
from .msdnet_config import MSDNetConfig
from .ranet_infer import floor_candidates, gcd_all

_MODULE = re.compile(r"blocks\.(\d+)\.(\d+)\.")
_CONV_BN = re.compile(r"blocks\.(\d+)\.(\d+)\.layers\.(\d+)\.(conv_normal|conv_down)\.net\.(\d+)\.weight$")


def is_msdnet_state(state: Mapping) -> bool:
    """Whether the keys are an MSDNet's: dense layers under ``blocks.0.0.layers.`` and a
    ``classifier``."""
    return any(k.startswith("blocks.0.0.layers.") for k in state) and any(k.startswith("classifier.") for k in state)


def infer_msdnet_config(state: Mapping) -> MSDNetConfig:
    """The MSDNetConfig whose model has exactly ``state``'s keys and shapes (the module
    docstring says what is read from where; the first exact match wins).

    Raises:
        CheckpointError: not an MSDNet state_dict, a key the inference needs is missing, or no
            candidate has exactly these keys and shapes (give the official flags).
        MissingExtraError: torch is not installed (the ``export`` extra).
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"cannot infer the MSDNet architecture: key {key} is missing; "
                                  "give the official flags or a --preset")
        return tuple(state[key].shape)

    stem = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.0\.0\.layers\.(\d+)\.", k))})
    if not stem:
        raise CheckpointError("not an MSDNet state_dict (no blocks.0.0.layers.* keys)")
    n_scales = len(stem)
    imagenet = "blocks.0.0.layers.0.0.weight" in state
    stem_out = [shape(f"blocks.0.0.layers.{s}.{'0' if imagenet and s == 0 else 'net.0'}.weight")[0]
                for s in range(n_scales)]
    n_exits = len({int(m.group(1)) for k in state if (m := re.match(r"classifier\.(\d+)\.", k))})
    num_classes = shape("classifier.0.linear.weight")[0]
    data = "ImageNet" if imagenet else ("cifar100" if num_classes == 100 else "cifar10")

    # Dense layers per block, and the dense layer modules in order.
    modules: dict[int, dict[int, str]] = {}
    for k in state:
        if m := _MODULE.match(k):
            b, i = map(int, m.groups())
            if b == 0 and i == 0:
                continue
            kind = "transition" if k.startswith(f"blocks.{b}.{i}.m.") else "layer"
            modules.setdefault(b, {})[i] = kind
    steps = [sum(1 for kind in modules.get(b, {}).values() if kind == "layer") for b in range(n_exits)]
    if not steps or min(steps) < 1:
        raise CheckpointError("not an MSDNet state_dict (a block without dense layers)")
    step_options: list[tuple[str, int]]
    if n_exits == 1:
        step_options = [("even", 1)]
    elif len(set(steps[1:])) == 1:
        step_options = [("even", steps[1])] + ([("lin_grow", steps[1] - 1)] if steps[1] > 1 else [])
    else:
        step_options = [("lin_grow", steps[1] - 1)]

    # Bottleneck, growth per scale and bottleneck widths from the dense layers' convs.
    bottleneck = any(m and m.group(5) == "3" for m in map(_CONV_BN.match, state))
    growth_at: dict[int, int] = {}
    bn_exact: dict[int, int] = {}
    bn_floor: dict[int, int] = {}
    last = "3" if bottleneck else "0"
    out_scales: dict[tuple[int, int], int] = {}  # (block, module) -> scales it produces
    for m in filter(None, map(_CONV_BN.match, state)):
        key = (int(m.group(1)), int(m.group(2)))
        out_scales[key] = max(out_scales.get(key, 0), int(m.group(3)) + 1)
    for k in state:
        m = _CONV_BN.match(k)
        if not m or m.group(5) != "0":
            continue
        b, i, j, which = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        s = n_scales - out_scales[(b, i)] + j
        out = shape(f"blocks.{b}.{i}.layers.{j}.{which}.net.{last}.weight")[0]
        is_split = f"blocks.{b}.{i}.layers.{j}.conv_down.net.0.weight" in state
        growth_at.setdefault(s, out * (2 if is_split else 1))
        if bottleneck:
            inner, n_in = shape(k)[:2]
            bn_scale = s - 1 if which == "conv_down" else s
            if inner < n_in:
                bn_exact.setdefault(bn_scale, inner // out)
            bn_floor[bn_scale] = max(bn_floor.get(bn_scale, 1), -(-n_in // out))
    gr_candidates = {tuple(c // gcd_all(stem_out) for c in stem_out)}
    if len(growth_at) == n_scales:
        growth = [growth_at[s] for s in range(n_scales)]
        gr_candidates.add(tuple(g // gcd_all(growth) for g in growth))

    # Transitions: (channels in, out, scale) of the finest kept scale's 1x1 conv.
    trans_kept: dict[tuple[int, int], int] = {}
    for k in state:
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.m\.(\d+)\.net\.0\.weight$", k):
            key = (int(m.group(1)), int(m.group(2)))
            trans_kept[key] = max(trans_kept.get(key, 0), int(m.group(3)) + 1)
    transitions = [(*shape(f"blocks.{b}.{i}.m.0.net.0.weight")[1::-1], n_scales - kept)
                   for (b, i), kept in trans_kept.items()]
    expected = {k: tuple(v.shape) for k, v in state.items()}
    tried = 0
    for gr, (mode, step), prune in itertools.product(
            sorted(gr_candidates, reverse=True), step_options, ("max", "min")):
        if any(c % f for c, f in zip(stem_out, gr, strict=True)):
            continue
        # reduction shows through floor(r * n) == out in base channels (before * grFactor).
        pairs = [(n // gr[s], out // gr[s]) for n, out, s in transitions]
        for red in (floor_candidates(pairs, 0.5) if pairs else [0.5, 0.0]):
            cfg = _candidate(data, n_exits, stem_out, steps, mode, step, gr, prune, red, num_classes,
                             growth_at, bottleneck, bn_exact, bn_floor)
            if cfg is None:
                continue
            tried += 1
            if _meta_shapes(cfg) == expected:
                return cfg
    raise CheckpointError(
        f"could not infer the MSDNet architecture from the state_dict ({tried} candidates checked); "
        "give the official flags (--nBlocks, --base, --step, --stepmode, --prune, ...) or a --preset"
    )


def _candidate(data, n_exits, stem_out, steps, mode, step, gr, prune, red, num_classes,
               growth_at, bottleneck, bn_exact, bn_floor) -> MSDNetConfig | None:
    """The config these derived facts give, or None where they cannot build one."""
    g0 = next((growth_at[s] // gr[s] for s in sorted(growth_at) if growth_at[s] % gr[s] == 0), None)
    if g0 is None:
        return None
    bn = tuple(bn_exact.get(s, max(bn_floor.get(s, 1), gr[s])) for s in range(len(gr))) \
        if bottleneck else _default_bn(gr)
    try:
        cfg = MSDNetConfig(data=data, nBlocks=n_exits, nChannels=stem_out[0] // gr[0], base=steps[0],
                           stepmode=mode, step=max(step, 1), growthRate=g0, grFactor=gr, bnFactor=bn,
                           prune=prune, bottleneck=bottleneck, reduction=red,
                           num_classes=num_classes)
    except ConfigError:
        return None
    return cfg if list(cfg.steps) == steps else None


def _default_bn(gr: tuple[int, ...]) -> tuple[int, ...]:
    """bnFactor leaves no trace without a bottleneck: the official default where it fits."""
    return (1, 2, 4) if len(gr) == 3 else gr


def _meta_shapes(config: MSDNetConfig) -> dict[str, tuple[int, ...]]:
    torch = require("torch", "export")
    from .model.msdnet import MSDNet

    with torch.device("meta"):
        model = MSDNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

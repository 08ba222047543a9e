"""Working the official RANet flags out of a state_dict's names and shapes.

Official RANet checkpoints store no flags. The stem and the classifiers give the data set,
the number of scales and the classes; the blocks per scale and layers per block give
nBlocks, block_step and step; the stem and the growth per scale give nChannels,
growthRate and grFactor; bottleneck widths give bnFactor; compress_factor and reduction
show only through ``floor(x * n) == out``. Strides (scale_list) and stepmode leave no
direct trace, so every value is tried. Each candidate is built on the meta device and
compared key for key; the first exact match wins.
:mod:`.msdnet_infer` does the same for MSDNet with the helpers here.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from math import gcd

from .config import RANetConfig
from .errors import CheckpointError, ConfigError, require

_BLOCK = re.compile(r"scale_flows\.(\d+)\.(\d+)\.")
_LAYER = re.compile(r"scale_flows\.(\d+)\.(\d+)\.layers\.(\d+)\.")


def infer_config(state: Mapping) -> RANetConfig:
    """Work the official flags out from state_dict names and shapes.

    Every derived quantity is then checked by building the candidate architecture on the
    meta device and comparing every key and shape; the first exact match wins
    (docs/reference/ranet.md, "An official checkpoint with no flags").

    Raises:
        CheckpointError: not a RANet state_dict, a key the inference needs is missing, or no
            candidate has exactly these keys and shapes (give the official flags).
        MissingExtraError: torch is not installed (the ``export`` extra).
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
    n_ch, g_rate = gcd_all(stem_out), gcd_all(growth)
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
    cf_options = floor_candidates(cf_pairs, 0.25)
    red_options = floor_candidates(red_pairs, 0.5)
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


def floor_candidates(pairs: list[tuple[int, int]], default: float) -> list[float]:
    """Values x with floor(x * n) == out for every (n, out): the default if allowed, then
    round values, then the middle of the allowed interval."""
    if not pairs:
        return [default]
    lo = max(out / n for n, out in pairs)
    hi = min((out + 1) / n for n, out in pairs)
    ok = [v for v in [default] + [k / 100 for k in range(1, 100)] if lo <= v < hi and 0 < v < 1]
    mid = round((lo + hi) / 2, 6)
    return list(dict.fromkeys(ok[:3] + ([mid] if lo <= mid < hi and 0 < mid < 1 else [])))


def gcd_all(values: list[int]) -> int:
    """The greatest common divisor of ``values`` (0 for none)."""
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

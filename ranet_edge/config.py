"""RANet architecture configuration: the official flags as a frozen, validated dataclass.

Field names follow the official command line (``--block-step`` -> ``block_step``,
``--scale-list`` -> ``scale_list``). :meth:`RANetConfig.plan` turns a configuration into
the list of blocks the model builds; it is pure Python so validation needs no torch.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

#: Official dataset names and what each implies.
DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "ImageNet": (1000, 224)}


@dataclass(frozen=True)
class BlockSpec:
    """One block of the plan, in build (and forward) order."""

    subnet: int  # sub-network index i (0 = lowest resolution)
    index: int  # 1-based block index j inside the sub-network
    layers: int  # dense layers L
    fusion: bool  # reads the previous sub-network's block j (``_BlockUpNormal``)
    down: bool  # fusion block whose last layer halves the resolution
    n_in: int  # input channels
    growth: int  # channels added per layer
    bn_width: int  # bottleneck factor of this sub-network
    list_channels: tuple[int, ...]  # channels of [input, after layer 1, ..., after layer L]
    low_channels: tuple[int, ...]  # fusion only: channels of the list it reads
    concat_out: int  # channels before the optional transition
    trans: bool  # a 1x1 transition follows
    n_out: int  # channels of the block output
    exit: int | None  # exit index after this block (plain blocks only)


#: Sides of the coarsest feature map that the official classifiers (two stride-2 3x3 convs,
#: then a 2x2 average pool, then a linear layer over the channels) reduce to 1x1 pixel.
CLASSIFIER_SIDES = range(5, 13)


def classifier_side_problem(side: int, first: int, what: str, fix: str) -> str | None:
    """Why classifiers reading ``side``-pixel maps cannot run (None when they can); ``first``
    is the side of the finest map, ``what`` names the flag that sets the scale count and
    ``fix`` says what to use, with ``{n}`` for the scale counts that fit."""
    if side in CLASSIFIER_SIDES:
        return None
    fits = [n for n in range(1, 8) if first // 2 ** (n - 1) in CLASSIFIER_SIDES]
    return (f"{what} leaves {side}px maps for the classifiers, whose two stride-2 convs and 2x2 average pool "
            f"need {CLASSIFIER_SIDES.start} to {CLASSIFIER_SIDES.stop - 1} px: the official forward fails on it; "
            + fix.format(n=" or ".join(map(str, fits))))


class DatasetInput:
    """What the ``data`` field of a model config (RANet or MSDNet) says about its input."""

    data: str

    @property
    def image_size(self) -> int:
        """Side of the (square) network input: 32 for CIFAR, 224 for ImageNet."""
        return DATASETS[self.data][1]

    @property
    def is_imagenet(self) -> bool:
        """Whether the ImageNet stem (7x7 conv and max pool) and classifiers are built."""
        return self.data == "ImageNet"


@dataclass(frozen=True)
class RANetConfig(DatasetInput):
    """Every official RANet flag, with the official defaults (docs/reference/ranet.md,
    "Architecture flags"). ``data`` is matched case-insensitively; list fields accept
    ``"4-2-1"`` strings.

    Raises:
        ConfigError: a value out of range, lists of different lengths, a ``scale_list`` that
            does not start at 1 and grow by 0 or 1, inputs shrunk below 4 px, or a plan with
            a one-layer fusion block or a zero-channel layer.
    """

    data: str = "cifar10"  # cifar10 / cifar100 / ImageNet: stem, classifier type, classes
    nBlocks: int = 2  # blocks in the first (lowest-resolution) sub-network
    block_step: int = 2  # each later sub-network has this many more blocks
    nChannels: int = 16  # base channel count
    growthRate: int = 6  # base dense growth rate
    grFactor: tuple[int, ...] = (4, 2, 1)  # per sub-network multiplier of channels/growth
    bnFactor: tuple[int, ...] = (4, 2, 1)  # per sub-network bottleneck width factor
    scale_list: tuple[int, ...] = (1, 2, 3)  # resolution rank of each sub-network's input
    step: int = 4  # layers per block (see stepmode)
    stepmode: str = "even"  # even: `step` layers each; lg: linear growth
    compress_factor: float = 0.25  # share of a fusion layer's output from the coarser net
    reduction: float = 0.5  # transition-layer compression
    num_classes: int | None = field(default=None)  # None: implied by `data`

    def __post_init__(self) -> None:
        fix = object.__setattr__
        data = {d.lower(): d for d in DATASETS}.get(str(self.data).lower())
        if data is None:
            raise ConfigError(f"data={self.data!r} is not known; use one of {sorted(DATASETS)}")
        fix(self, "data", data)
        for name in ("grFactor", "bnFactor", "scale_list"):
            fix(self, name, _int_tuple(name, getattr(self, name)))
        if self.num_classes is None:
            fix(self, "num_classes", DATASETS[data][0])
        for name in ("nBlocks", "nChannels", "growthRate", "step", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if isinstance(self.block_step, bool) or not isinstance(self.block_step, int) or self.block_step < 0:
            raise ConfigError(f"block_step={self.block_step!r} must be an integer >= 0")
        if self.stepmode not in ("even", "lg"):
            raise ConfigError(f"stepmode={self.stepmode!r} must be 'even' or 'lg'")
        for name in ("compress_factor", "reduction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"{name}={value!r} must be a number strictly between 0 and 1")
            fix(self, name, float(value))
        n = len(self.grFactor)
        if len(self.bnFactor) != n or len(self.scale_list) != n:
            raise ConfigError(
                f"grFactor, bnFactor and scale_list must have the same length, got "
                f"{len(self.grFactor)}, {len(self.bnFactor)} and {len(self.scale_list)}"
            )
        scales = self.scale_list
        if scales[0] != 1 or any(b - a not in (0, 1) for a, b in zip(scales, scales[1:], strict=False)):
            raise ConfigError(
                f"scale_list={'-'.join(map(str, scales))} must start at 1 and grow by 0 or 1 "
                "per sub-network, e.g. 1-2-3"
            )
        if self.lowest_resolution < 4:
            raise ConfigError(
                f"scale_list={'-'.join(map(str, scales))} shrinks {self.image_size}px inputs to "
                f"{self.lowest_resolution}px, too small for the classifiers (need >= 4px); "
                "use fewer scales"
            )
        self.plan()  # raises ConfigError for zero-channel layers

    # ----------------------------------------------------------------- derived facts
    arch = "ranet"

    @property
    def num_scales(self) -> int:
        """S, the number of sub-networks."""
        return len(self.grFactor)

    def unrunnable(self) -> str | None:
        """Why the official forward cannot run this architecture (None: it can). The
        official constructor builds it all the same, so inference from a state_dict still
        recognises it; :func:`~ranet_edge.model.build_model` refuses it."""
        stem = self.image_size // 4 if self.is_imagenet else self.image_size
        return classifier_side_problem(self.lowest_resolution, stem,
                                       f"scale_list={'-'.join(map(str, self.scale_list))} on {self.data}",
                                       "use a scale_list whose largest rank is {n}")

    @property
    def lowest_resolution(self) -> int:
        """Side in pixels of the coarsest sub-network's input (after the stem's strides)."""
        stem = self.image_size // 4 if self.is_imagenet else self.image_size
        return stem // 2 ** (max(self.scale_list) - 1)

    @property
    def block_counts(self) -> tuple[int, ...]:
        """``nb`` of the official code: ``[0, blocks of sub-network 0, ...]``."""
        return (0,) + tuple(self.nBlocks + self.block_step * i for i in range(self.num_scales))

    @property
    def num_exits(self) -> int:
        """One per plain block: ``nBlocks + block_step * (S - 1)``."""
        return self.nBlocks + self.block_step * (self.num_scales - 1)

    def plan(self) -> list[BlockSpec]:
        """The blocks in build order, with every channel count the model needs
        (docs/reference/ranet.md, "Blocks, layers and exits").

        Raises:
            ConfigError: a fusion block would get one layer (``step`` 1), a fusion branch
                zero channels, or a transition zero outputs.
        """
        nb = self.block_counts
        steps = [self.step]
        blocks: list[BlockSpec] = []
        previous: list[BlockSpec] = []
        exit_index = 0
        for i in range(self.num_scales):
            n_blocks, scale = nb[i + 1], self.scale_list[i]
            down_at = set(nb[: i + 1][-(scale - 1):])  # official slice quirk kept on purpose
            trans_at = {math.floor((t + 1) * n_blocks / scale) for t in range(scale - 1)}
            n_in = self.nChannels * self.grFactor[i]
            growth = self.growthRate * self.grFactor[i]
            current: list[BlockSpec] = []
            for j in range(1, n_blocks + 1):
                fusion = j <= nb[i]
                n_layers = steps[j - 1]
                if not fusion:
                    steps.append(self.step if self.stepmode == "even" else steps[-1] + self.step)
                list_channels = tuple(n_in + k * growth for k in range(n_layers + 1))
                concat_out = list_channels[-1]
                low: tuple[int, ...] = ()
                if fusion:
                    low = previous[j - 1].list_channels
                    if n_layers < 2:
                        raise ConfigError(
                            f"step={self.step} gives one-layer fusion blocks, which the official "
                            "RANet code cannot build; use step >= 2"
                        )
                    up = math.floor(growth * self.compress_factor)
                    if up == 0 or growth - up == 0:
                        raise ConfigError(
                            f"growthRate*grFactor={growth} with compress_factor="
                            f"{self.compress_factor} gives a zero-channel fusion branch; raise "
                            "growthRate or change compress_factor"
                        )
                    last = math.floor(concat_out * self.compress_factor)
                    concat_out += last
                trans = j in trans_at
                n_out = math.floor(self.reduction * concat_out) if trans else concat_out
                if n_out == 0:
                    raise ConfigError(
                        f"reduction={self.reduction} leaves zero channels after block {j} of "
                        f"sub-network {i}; raise reduction or nChannels"
                    )
                spec = BlockSpec(
                    subnet=i, index=j, layers=n_layers, fusion=fusion,
                    down=fusion and j in down_at, n_in=n_in, growth=growth,
                    bn_width=self.bnFactor[i], list_channels=list_channels, low_channels=low,
                    concat_out=concat_out, trans=trans, n_out=n_out,
                    exit=None if fusion else exit_index,
                )
                exit_index += 0 if fusion else 1
                current.append(spec)
                n_in = n_out
            blocks.extend(current)
            previous = current
        return blocks

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field under its name, tuples as lists (JSON-ready; :meth:`from_dict` reads it)."""
        out = dataclasses.asdict(self)
        for name in ("grFactor", "bnFactor", "scale_list"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RANetConfig:
        """Build from a mapping; unknown keys are refused with the list of valid ones.

        Keys may use the official dashed spelling (``scale-list``) and list values may be
        given as official ``4-2-1`` strings.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones), or values the
                constructor refuses.
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in valid:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(valid))}")
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RANetConfig:
        """A copy with some fields changed; ``None`` values are ignored (unset CLI flags).

        Raises:
            ConfigError: the changed configuration is invalid.
            TypeError: a name that is not a field.
        """
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def official_flags(self) -> str:
        """The official command-line flags that build this architecture."""
        d = self.to_dict()
        parts = [f"--data {self.data}"]
        for key in ("nBlocks", "block_step", "nChannels", "growthRate", "grFactor", "bnFactor",
                    "scale_list", "step", "stepmode", "compress_factor", "reduction"):
            value = d[key]
            if isinstance(value, list):
                value = "-".join(map(str, value))
            parts.append(f"--{key.replace('_', '-')} {value}")
        return " ".join(parts)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = value.split("-")
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be integers like 4-2-1") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{name}={value!r} must be one or more positive integers like 4-2-1")
    return items

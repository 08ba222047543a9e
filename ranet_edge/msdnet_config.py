"""MSDNet architecture configuration: the official MSDNet-PyTorch flags as a frozen dataclass.

Field names are the official ``args.py`` names. :meth:`MSDNetConfig.plan` turns a
configuration into the list of layers the model builds, with every channel count, in pure
Python, so validation and checkpoint inference need no torch. Scales run fine to coarse
(``grFactor`` 1-2-4), the opposite of RANet's order.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import DATASETS, DatasetInput, _int_tuple, classifier_side_problem
from .errors import ConfigError

ARCH = "msdnet"


@dataclass(frozen=True)
class MSDLayerSpec:
    """One entry of a block's ``Sequential``: a multi-scale dense layer or a transition."""

    block: int  # block (exit) index
    kind: str  # "layer" or "transition"
    n_in: int  # base channels in (multiply by grFactor[s] for scale s)
    n_out: int  # base channels out
    in_scales: int  # scales read (the coarsest ones)
    out_scales: int  # scales produced (the coarsest ones)


@dataclass(frozen=True)
class MSDNetConfig(DatasetInput):
    """Every official MSDNet flag (``args.py``), with the official defaults. ``data`` is matched
    case-insensitively; ``grFactor`` and ``bnFactor`` accept ``"1-2-4"`` strings and
    ``bottleneck`` the strings ``"True"``/``"False"``.

    Raises:
        ConfigError: a value out of range or of the wrong type, factor lists of different
            lengths, inputs shrunk below what the classifiers read, or a layer plan the
            official code cannot build.
    """

    data: str = "cifar10"  # cifar10 / cifar100 / ImageNet: stem, classifier type, classes
    nBlocks: int = 1  # number of blocks = number of exits
    nChannels: int = 32  # base channel count of the first layer
    base: int = 4  # layers in the first block
    stepmode: str = "even"  # even: `step` layers per later block; lin_grow: step*i + 1
    step: int = 1  # layers per later block (see stepmode)
    growthRate: int = 6  # base dense growth rate
    grFactor: tuple[int, ...] = (1, 2, 4)  # per-scale channel/growth multiplier, fine to coarse
    bnFactor: tuple[int, ...] = (1, 2, 4)  # per-scale bottleneck width factor
    prune: str = "max"  # where scales are dropped: min or max
    bottleneck: bool = True  # 1x1 bottleneck before each 3x3
    reduction: float = 0.5  # transition compression (0: no transitions)
    num_classes: int | None = field(default=None)  # None: implied by `data`

    def __post_init__(self) -> None:
        fix = object.__setattr__
        data = {d.lower(): d for d in DATASETS}.get(str(self.data).lower())
        if data is None:
            raise ConfigError(f"data={self.data!r} is not known; use one of {sorted(DATASETS)}")
        fix(self, "data", data)
        for name in ("grFactor", "bnFactor"):
            fix(self, name, _int_tuple(name, getattr(self, name)))
        if self.num_classes is None:
            fix(self, "num_classes", DATASETS[data][0])
        for name in ("nBlocks", "nChannels", "base", "step", "growthRate", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.stepmode not in ("even", "lin_grow"):
            raise ConfigError(f"stepmode={self.stepmode!r} must be 'even' or 'lin_grow' for MSDNet")
        if self.prune not in ("min", "max"):
            raise ConfigError(f"prune={self.prune!r} must be 'min' or 'max'")
        if isinstance(self.bottleneck, str):
            if self.bottleneck.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"bottleneck={self.bottleneck!r} must be True or False")
            fix(self, "bottleneck", self.bottleneck.lower() in ("true", "1"))
        if not isinstance(self.bottleneck, bool):
            raise ConfigError(f"bottleneck={self.bottleneck!r} must be True or False")
        if not isinstance(self.reduction, (int, float)) or isinstance(self.reduction, bool) \
                or not 0.0 <= self.reduction <= 1.0:
            raise ConfigError(f"reduction={self.reduction!r} must be a number in [0, 1] (0: no transitions)")
        fix(self, "reduction", float(self.reduction))
        if len(self.bnFactor) != len(self.grFactor):
            raise ConfigError(f"grFactor and bnFactor must have the same length, got "
                              f"{len(self.grFactor)} and {len(self.bnFactor)}")
        if self.coarsest_resolution < 4:
            raise ConfigError(f"{self.num_scales} scales shrink {self.image_size}px inputs to "
                              f"{self.coarsest_resolution}px, too small for the classifiers; use fewer scales")
        self.plan()  # raises ConfigError for layers the official code cannot build

    # ----------------------------------------------------------------- derived facts
    arch = ARCH

    @property
    def num_scales(self) -> int:
        """Scales the first layer makes (``len(grFactor)``), finest first."""
        return len(self.grFactor)

    @property
    def num_exits(self) -> int:
        """One classifier per block: ``nBlocks``."""
        return self.nBlocks

    def unrunnable(self) -> str | None:
        """Why the official forward cannot run this architecture (None: it can). The
        official constructor builds it all the same, so inference from a state_dict still
        recognises it; :func:`~ranet_edge.model.build_model` refuses it."""
        n_all = sum(self.steps)
        if self.prune == "min" and n_all + 1 < self.num_scales:
            # The first dense layer then reads the first maps of the num_scales the first layer
            # makes (the finest ones) with layers built for the coarsest.
            return (f"prune min with {n_all} dense layer(s) in all reads {n_all + 1} of the {self.num_scales} "
                    "scales at the first layer: the official forward fails on it; use at least "
                    f"{self.num_scales - 1} dense layers (--base, --step) or --prune max")
        first = self.image_size // 4 if self.is_imagenet else self.image_size
        return classifier_side_problem(self.coarsest_resolution, first,
                                       f"grFactor={'-'.join(map(str, self.grFactor))} on {self.data}",
                                       "use {n} scales (grFactor and bnFactor of that length)")

    @property
    def coarsest_resolution(self) -> int:
        """Side in pixels of the coarsest scale, the one the classifiers read."""
        first = self.image_size // 4 if self.is_imagenet else self.image_size
        return first // 2 ** (self.num_scales - 1)

    @property
    def steps(self) -> tuple[int, ...]:
        """Layers per block, as the official constructor computes them."""
        return (self.base,) + tuple(self.step if self.stepmode == "even" else self.step * i + 1
                                    for i in range(1, self.nBlocks))

    def plan(self) -> list[MSDLayerSpec]:
        """Every layer and transition in build order (``blocks[b]`` minus the first layer).

        Raises:
            ConfigError: pruning drops every scale, a scale is left with zero channels, or a
                transition leaves zero channels.
        """
        n_scales, steps = self.num_scales, self.steps
        n_all, cur, n_in = sum(steps), 0, self.nChannels
        out: list[MSDLayerSpec] = []
        for b, n_layers in enumerate(steps):
            for _ in range(n_layers):
                cur += 1
                if self.prune == "min":
                    in_s = min(n_scales, n_all - cur + 2)
                    out_s = min(n_scales, n_all - cur + 1)
                else:
                    interval = math.ceil(n_all / n_scales)
                    in_s = n_scales - math.floor(max(0, cur - 2) / interval)
                    out_s = n_scales - math.floor((cur - 1) / interval)
                if out_s < 1:
                    raise ConfigError("the layer plan drops every scale; use fewer scales or more layers")
                offset = n_scales - out_s
                for s in range(offset, n_scales):
                    if (s > offset or in_s > out_s) and (self.growthRate * self.grFactor[s]) % 2:
                        raise ConfigError(
                            f"growthRate*grFactor={self.growthRate * self.grFactor[s]} is odd at scale {s}, "
                            "where a layer splits its growth in two; use an even growth")
                out.append(MSDLayerSpec(b, "layer", n_in, self.growthRate, in_s, out_s))
                n_in += self.growthRate
                pruned = self.prune == "max" and in_s > out_s
                thirds = self.prune == "min" and cur in (math.floor(n_all / 3), math.floor(2 * n_all / 3))
                if self.reduction > 0 and (pruned or thirds):
                    n_out = math.floor(self.reduction * n_in)
                    if n_out == 0:
                        raise ConfigError(f"reduction={self.reduction} leaves zero channels after layer {cur}; "
                                          "raise reduction or nChannels")
                    out.append(MSDLayerSpec(b, "transition", n_in, n_out, out_s, out_s))
                    n_in = n_out
        return out

    def block_out_channels(self) -> list[int]:
        """Base channels leaving each block (the classifier reads ``* grFactor[-1]``)."""
        last: dict[int, int] = {}
        for spec in self.plan():
            last[spec.block] = spec.n_out if spec.kind == "transition" else spec.n_in + spec.n_out
        return [last[b] for b in range(self.nBlocks)]

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field, tuples as lists, plus ``"arch": "msdnet"`` (what tells an MSDNet config
        from a RANet one in a checkpoint or manifest; :meth:`from_dict` reads it)."""
        out = {"arch": ARCH, **dataclasses.asdict(self)}
        for name in ("grFactor", "bnFactor"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MSDNetConfig:
        """Build from a mapping (official dashed keys, ``1-2-4`` strings and numbers as text
        accepted); unknown keys are refused with the list of valid ones.

        Raises:
            ConfigError: an unknown key, an ``arch`` other than ``"msdnet"``, a number that
                does not parse, or values the constructor refuses.
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name == "arch":
                if value != ARCH:
                    raise ConfigError(f"arch={value!r} is not an MSDNet config")
                continue
            if name not in valid:
                raise ConfigError(f"unknown MSDNet config key {key!r}; valid keys: {', '.join(sorted(valid))}")
            kwargs[name] = _from_text(name, value)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> MSDNetConfig:
        """A copy with some fields changed; ``None`` values are ignored (unset CLI flags).

        Raises:
            ConfigError: the changed configuration is invalid.
            TypeError: a name that is not a field.
        """
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def official_flags(self) -> str:
        """The official MSDNet-PyTorch command-line flags that build this architecture."""
        parts = [f"--data {self.data}"]
        for key in ("nBlocks", "nChannels", "base", "stepmode", "step", "growthRate", "grFactor",
                    "bnFactor", "prune", "bottleneck", "reduction"):
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = "-".join(map(str, value))
            parts.append(f"--{key} {value}")
        return " ".join(parts)


_INT_FIELDS = ("nBlocks", "nChannels", "base", "step", "growthRate", "num_classes")


def _from_text(name: str, value: Any) -> Any:
    """Official flags read as text (``--nBlocks 5``, ``--reduction 0.5``) become numbers."""
    if not isinstance(value, str):
        return value
    try:
        if name in _INT_FIELDS:
            return int(value)
        if name == "reduction":
            return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be a number") from None
    return value

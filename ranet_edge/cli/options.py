"""Options shared by several commands, defined once and stacked as decorators."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import ConfigError

_ARCH_FLAGS = [
    ("--data", "data", str, "cifar10 / cifar100 / ImageNet"),
    ("--nBlocks", "nBlocks", int, "blocks in the first sub-network"),
    ("--block-step", "block_step", int, "extra blocks per later sub-network"),
    ("--nChannels", "nChannels", int, "base channel count"),
    ("--growthRate", "growthRate", int, "base growth rate"),
    ("--grFactor", "grFactor", str, "per sub-network growth factors, e.g. 4-2-1"),
    ("--bnFactor", "bnFactor", str, "per sub-network bottleneck factors, e.g. 4-2-1"),
    ("--scale-list", "scale_list", str, "resolution ranks, e.g. 1-2-3"),
    ("--step", "step", int, "layers per block"),
    ("--stepmode", "stepmode", click.Choice(["even", "lg"]), "even or lg"),
    ("--compress-factor", "compress_factor", float, "fusion compress factor"),
    ("--reduction", "reduction", float, "transition compression"),
]


def arch_options(func: Callable | None = None, *, with_data: bool = True) -> Callable:
    """``--preset NAME`` plus every official architecture flag (official spellings).

    ``train`` uses ``--data`` for the dataset path, so it takes the family from
    ``--dataset`` instead (``with_data=False``).
    """
    def wrap(f: Callable) -> Callable:
        for flag, dest, typ, help_text in reversed(_ARCH_FLAGS):
            if dest == "data" and not with_data:
                continue
            f = click.option(flag, dest, type=typ, default=None, help=f"official flag: {help_text}")(f)
        from ..presets import list_presets

        return click.option("--preset", default=None,
                            help=f"named configuration: {', '.join(list_presets())}")(f)

    return wrap(func) if func is not None else wrap


def resolve_arch(preset: str | None, flags: dict[str, Any], default_data: str | None = None):
    """(config or None, source) from ``--preset`` and official flags; None means infer."""
    from ..config import RANetConfig
    from ..presets import get_preset

    given = {k: v for k, v in flags.items() if v is not None}
    if preset:
        base = get_preset(preset)
        return (base.replace(**given) if given else base), ("preset" if not given else "flags")
    if given:
        try:
            return RANetConfig.from_dict(given), "flags"
        except TypeError as exc:  # pragma: no cover - from_dict validates keys first
            raise ConfigError(str(exc)) from None
    return None, "inferred"


def pop_arch(kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    flags = {dest: kwargs.pop(dest, None) for _, dest, _, _ in _ARCH_FLAGS}
    return kwargs.pop("preset"), flags


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")(func)

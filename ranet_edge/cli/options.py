"""Options shared by several commands, defined once and stacked as decorators."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import ConfigError

_ARCH_FLAGS = [
    ("--data", "data", str, "cifar10 / cifar100 / ImageNet"),
    ("--nBlocks", "nBlocks", int, "RANet: blocks in the first sub-network; MSDNet: blocks (exits)"),
    ("--block-step", "block_step", int, "RANet: extra blocks per later sub-network"),
    ("--nChannels", "nChannels", int, "base channel count"),
    ("--growthRate", "growthRate", int, "base growth rate"),
    ("--grFactor", "grFactor", str, "growth factors, e.g. 4-2-1 (RANet) or 1-2-4 (MSDNet)"),
    ("--bnFactor", "bnFactor", str, "bottleneck factors, e.g. 4-2-1 (RANet) or 1-2-4 (MSDNet)"),
    ("--scale-list", "scale_list", str, "RANet: resolution ranks, e.g. 1-2-3"),
    ("--step", "step", int, "layers per block"),
    ("--stepmode", "stepmode", click.Choice(["even", "lg", "lin_grow"]), "even, lg (RANet) or lin_grow (MSDNet)"),
    ("--compress-factor", "compress_factor", float, "RANet: fusion compress factor"),
    ("--reduction", "reduction", float, "transition compression"),
    ("--base", "base", int, "MSDNet: layers in the first block"),
    ("--prune", "prune", click.Choice(["min", "max"]), "MSDNet: where scales are dropped"),
    ("--bottleneck", "bottleneck", click.Choice(["True", "False"]), "MSDNet: 1x1 bottlenecks"),
]
_MSDNET_ONLY = {"base", "prune", "bottleneck"}
_ARCHES = click.Choice(["ranet", "msdnet"])


def arch_options(func: Callable | None = None, *, with_data: bool = True) -> Callable:
    """``--arch``, ``--preset NAME`` plus every official architecture flag (official spellings).

    ``train`` uses ``--data`` for the dataset path, so it takes the family from
    ``--dataset`` instead (``with_data=False``).
    """
    def wrap(f: Callable) -> Callable:
        for flag, dest, typ, help_text in reversed(_ARCH_FLAGS):
            if dest == "data" and not with_data:
                continue
            f = click.option(flag, dest, type=typ, default=None, help=f"official flag: {help_text}")(f)
        from ..presets import list_presets

        f = click.option("--preset", default=None,
                         help=f"named configuration: {', '.join(list_presets())}")(f)
        return click.option("--arch", "arch", type=_ARCHES, default=None,
                            help="ranet or msdnet [default: detected from the checkpoint's keys, "
                                 "or from the flags]")(f)

    return wrap(func) if func is not None else wrap


def resolve_arch(preset: str | None, flags: dict[str, Any]):
    """(config or None, source, arch or None) from ``--arch``, ``--preset`` and official flags.

    A None config means "infer it from the checkpoint" (as ``arch`` if given). The family is
    the preset's, else ``--arch``, else MSDNet when an MSDNet-only flag is given.

    Raises:
        ConfigError: an unknown preset, a preset of the other family than ``--arch``, flags the
            family does not have (named), or flag values the configuration refuses.
    """
    from ..architectures import NAMES, config_type
    from ..presets import get_preset

    given = {k: v for k, v in flags.items() if v is not None}
    arch = given.pop("arch", None)
    if "bottleneck" in given:
        given["bottleneck"] = given["bottleneck"] == "True"
    if preset:
        base = get_preset(preset)
        if arch and arch != base.arch:
            raise ConfigError(f"--preset {preset} is a {NAMES[base.arch]}, not a {NAMES[arch]}; drop --arch "
                              "or pick another preset")
        _check_flags(base.arch, given)
        return (base.replace(**given) if given else base), ("preset" if not given else "flags"), base.arch
    if given:
        if arch is None:
            arch = "msdnet" if (_MSDNET_ONLY & set(given) or given.get("stepmode") == "lin_grow") else "ranet"
        _check_flags(arch, given)
        return config_type(arch).from_dict(given), "flags", arch
    return None, "inferred", arch


def _check_flags(arch: str, given: dict[str, Any]) -> None:
    """Refuse flags the architecture does not have, naming them."""
    import dataclasses

    from ..architectures import NAMES, config_type

    fields = {f.name for f in dataclasses.fields(config_type(arch))}
    foreign = [name for name in given if name not in fields]
    if foreign:
        spelled = ", ".join("--" + next(f for f, d, _, _ in _ARCH_FLAGS if d == n).lstrip("-") for n in foreign)
        raise ConfigError(f"{spelled} {'is' if len(foreign) == 1 else 'are'} not {NAMES[arch]} flag(s); "
                          f"drop them or pass --arch {'ranet' if arch == 'msdnet' else 'msdnet'}")


def pop_arch(kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(preset, flags) out of a command's kwargs; ``flags`` holds ``arch`` too."""
    flags = {dest: kwargs.pop(dest, None) for _, dest, _, _ in _ARCH_FLAGS}
    flags["arch"] = kwargs.pop("arch", None)
    return kwargs.pop("preset"), flags


def json_option(func: Callable) -> Callable:
    """``--json`` (``as_json``): print machine-readable JSON instead of the table."""
    return click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")(func)

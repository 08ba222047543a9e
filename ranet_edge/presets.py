"""Named RANet and MSDNet configurations: one registry, filled by :func:`register`."""
from __future__ import annotations

from .architectures import ArchConfig
from .config import RANetConfig
from .errors import ConfigError
from .msdnet_config import MSDNetConfig

_PRESETS: dict[str, ArchConfig] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register(name: str, config: ArchConfig, description: str) -> None:
    """Add a named configuration; ``description`` is the line :func:`describe` gives.

    Raises:
        ValueError: ``name`` is registered already (a programming error, not user input).
    """
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} registered twice")
    _PRESETS[name] = config
    _DESCRIPTIONS[name] = description


def get_preset(name: str) -> ArchConfig:
    """The configuration registered as ``name`` (a frozen dataclass: share it freely).

    Raises:
        ConfigError: no preset has that name; the message lists them.
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}") from None


def list_presets(arch: str | None = None) -> list[str]:
    """Every preset name, or those of one architecture ("ranet" / "msdnet")."""
    return sorted(name for name, config in _PRESETS.items() if arch is None or config.arch == arch)


def describe(name: str) -> str:
    """One line on what the preset is for (shown by ``--help``).

    Raises:
        KeyError: no preset has that name (:func:`get_preset` says so in one line).
    """
    return _DESCRIPTIONS[name]


register("cifar10-c1", RANetConfig(data="cifar10", step=2, stepmode="lg"),
         "RANet C-1 of the paper on CIFAR-10 (--step 2 --stepmode lg)")
register("cifar100-c1", RANetConfig(data="cifar100", step=2, stepmode="lg"),
         "RANet C-1 on CIFAR-100")
register("cifar10-4scale",
         RANetConfig(data="cifar10", step=4, scale_list=(1, 2, 3, 3), grFactor=(4, 2, 1, 1),
                     bnFactor=(4, 2, 1, 1)),
         "four sub-networks on CIFAR-10 (--step 4 --scale-list 1-2-3-3 --grFactor 4-2-1-1)")
register("imagenet",
         RANetConfig(data="ImageNet", step=8, growthRate=16, nChannels=32, scale_list=(1, 2, 3, 4),
                     grFactor=(4, 2, 2, 1), bnFactor=(4, 2, 2, 1)),
         "the paper's ImageNet RANet (--step 8 --growthRate 16 --nChannels 32)")
register("cifar10-w8",
         RANetConfig(data="cifar10", step=2, stepmode="even", nChannels=8, growthRate=4),
         "width-8 CIFAR-10 RANet (6 exits, ~17 MFLOPs) that trains on a CPU; the bundled default")
register("tiny",
         RANetConfig(data="cifar10", nBlocks=1, block_step=1, step=2, nChannels=4, growthRate=4),
         "a three-sub-network, three-exit toy (~1 MFLOPs) for tests and demos")
register("imagenet-small",
         RANetConfig(data="ImageNet", step=2, nChannels=8, growthRate=4, scale_list=(1, 2, 3, 4),
                     grFactor=(4, 2, 2, 1), bnFactor=(4, 2, 2, 1)),
         "narrow ImageNet-type RANet (the golden imagenet-small flags) for tests")

# MSDNet: the configurations of the authors' README, and the match for the default model.
register("msdnet-cifar-budget",
         MSDNetConfig(data="cifar10", nBlocks=7, stepmode="even", step=2, base=4, nChannels=16),
         "MSDNet for CIFAR budgeted batch classification (--nBlocks 7 --stepmode even --step 2 --base 4)")
register("msdnet-cifar-anytime",
         MSDNetConfig(data="cifar10", nBlocks=5, stepmode="lin_grow", step=1, base=1, nChannels=16),
         "MSDNet for CIFAR anytime prediction (--nBlocks 5 --stepmode lin_grow --step 1 --base 1)")
register("msdnet-imagenet",
         MSDNetConfig(data="ImageNet", nBlocks=5, stepmode="even", step=4, base=4, nChannels=32, growthRate=16,
                      grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4)),
         "the authors' ImageNet MSDNet (--nBlocks 5 --step 4 --nChannels 32 --growthRate 16 --grFactor 1-2-4-4)")
register("msdnet-cifar10-w6",
         MSDNetConfig(data="cifar10", nBlocks=6, stepmode="even", step=1, base=2, nChannels=6, growthRate=4),
         "width-6 CIFAR-10 MSDNet matched to cifar10-w8's cost (6 exits, 3.52-16.64 MFLOPs) for the comparison")

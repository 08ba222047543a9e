"""The architectures ranet-edge knows, and the one place that tells them apart.

A configuration is a :class:`~ranet_edge.config.RANetConfig` or an
:class:`~ranet_edge.msdnet_config.MSDNetConfig`; both carry ``arch`` ("ranet" or "msdnet"),
``to_dict`` (which records ``arch`` for MSDNet), ``official_flags`` and the same derived
facts (``num_exits``, ``image_size``, ``num_classes``, ``data``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from .config import RANetConfig
from .errors import ConfigError
from .msdnet_config import MSDNetConfig

ArchConfig = Union[RANetConfig, MSDNetConfig]

CONFIG_TYPES: dict[str, type] = {"ranet": RANetConfig, "msdnet": MSDNetConfig}
#: Display names, as the manifest records them.
NAMES = {"ranet": "RANet", "msdnet": "MSDNet"}


def config_type(arch: str) -> type:
    """The configuration class of ``arch`` ("ranet" or "msdnet", any case).

    Raises:
        ConfigError: an unknown architecture name; the message lists the known ones.
    """
    try:
        return CONFIG_TYPES[arch.lower()]
    except KeyError:
        raise ConfigError(f"unknown architecture {arch!r}; use one of: {', '.join(CONFIG_TYPES)}") from None


def config_from_dict(values: Mapping[str, Any], arch: str | None = None) -> ArchConfig:
    """Build the config a dict describes: ``arch`` given, or the dict's ``arch`` key, or RANet
    (checkpoints written before MSDNet support store no ``arch``).

    Raises:
        ConfigError: an unknown architecture, an unknown key, or values the configuration
            refuses.
    """
    arch = arch or str(values.get("arch", "ranet"))
    values = {k: v for k, v in values.items() if k != "arch"}
    return config_type(arch).from_dict(values)

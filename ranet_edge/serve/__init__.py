"""Serve a bundle over HTTP on Ray Serve: dynamic batching, per-sample exit, early answers.

``ranet-edge serve`` is the command. For Ray's own tooling, ``build_app`` is an application
builder: ``serve run ranet_edge.serve:build_app bundle=DIR`` or, in a config file,
``import_path: ranet_edge.serve:build_app`` with the ``ServeSettings`` fields under ``args``.
Importing this package does not import Ray.
"""
from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "build_app"]


def build_app(args: dict[str, Any]):
    """Application builder for ``serve run`` / ``serve deploy``: ``args`` are ServeSettings fields.

    The bundle is loaded by each replica, not here: its errors show in the replicas' logs.

    Raises:
        ConfigError: an unknown setting or a value out of range.
    """
    from .deployment import build_deployment

    return build_deployment(ServeSettings.from_dict(dict(args)))

"""The ``ranet-edge`` click group with every command attached, for tools that read a module
attribute rather than call :func:`ranet_edge.cli.get_cli` (the docs' CLI reference, mkdocs-click)."""
from __future__ import annotations

from . import get_cli

cli = get_cli()

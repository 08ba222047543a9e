"""The ``ranet-edge`` command line: thin click wrappers over the library."""
from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import RanetEdgeError


class _Group(click.Group):
    """Turns every RanetEdgeError into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RanetEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ranet-edge")
def cli() -> None:
    """Deploy Resolution Adaptive Networks as chained per-exit ONNX graphs."""


def _register() -> None:
    from . import (  # noqa: F401  (each module attaches its commands to `cli`)
        commands_bench,
        commands_convert,
        commands_demo,
        commands_eval,
        commands_model,
        commands_runtime,
        commands_serve,
    )


def main(argv: Sequence[str] | None = None) -> None:
    _register()
    cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="ranet-edge")


def get_cli() -> click.Group:
    """The fully registered group (for CliRunner in tests)."""
    _register()
    return cli

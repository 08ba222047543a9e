"""The ``ranet-edge`` command line: thin click wrappers over the library."""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import RanetEdgeError


class _EchoHandler(logging.Handler):
    """Prints the library's log records as the commands always printed them: the export's
    validation table on stdout, progress of other steps (training, conversion) on stderr."""

    STDOUT = ("ranet_edge.export.exporter",)

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=record.name not in self.STDOUT)


def _print_library_logs() -> None:
    """Route the ``ranet_edge`` loggers to the terminal (once)."""
    root = logging.getLogger("ranet_edge")
    if not any(isinstance(h, _EchoHandler) for h in root.handlers):
        root.addHandler(_EchoHandler())
        root.setLevel(logging.INFO)
        root.propagate = False


class _Group(click.Group):
    """Turns every RanetEdgeError, and click's own usage errors, into one line on stderr."""

    def invoke(self, ctx: click.Context):
        _print_library_logs()
        try:
            return super().invoke(ctx)
        except RanetEdgeError as exc:
            click.echo(f"error: {exc.summary}", err=True)
            ctx.exit(exc.exit_code)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's standalone mode, except that a usage error (a bad flag value, a missing
        argument, an unknown command) is one line naming the fix, not the usage block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            message = "; ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see `{exc.ctx.command_path} --help`)"
            click.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # without standalone mode click returns ctx.exit()'s code, or the command's return value
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ranet-edge")
def cli() -> None:
    """Deploy Resolution Adaptive Networks as chained per-exit ONNX graphs."""


def _register() -> None:
    from . import (  # noqa: F401  (each module attaches its commands to `cli`)
        commands_bench,
        commands_convert,
        commands_demo,
        commands_doctor,
        commands_eval,
        commands_model,
        commands_runtime,
        commands_serve,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``ranet-edge`` console script: run the command ``argv`` names (default: the process's
    arguments) and exit with its status. Never returns.

    Raises:
        SystemExit: always; 0 on success, 2 with one ``error:`` line on stderr for a
            :class:`~ranet_edge.errors.RanetEdgeError` or a usage error, 1 when aborted.
    """
    _register()
    cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="ranet-edge")


def get_cli() -> click.Group:
    """The fully registered group (for CliRunner in tests)."""
    _register()
    return cli

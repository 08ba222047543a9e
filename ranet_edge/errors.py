"""One exception hierarchy for the whole toolkit.

Every error a user can cause derives from :class:`RanetEdgeError`. Messages name the bad
value, what would be valid, and the fix; the CLI prints them as one line and exits 2.
This module imports nothing heavy: the torch-free runtime depends on it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RanetEdgeError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 2

    @property
    def summary(self) -> str:
        """The one line the CLI prints after ``error:`` (``str()`` may add detail below it)."""
        return str(self)


class ConfigError(RanetEdgeError):
    """An invalid architecture configuration or preset name."""


class CheckpointError(RanetEdgeError):
    """A file that is not a usable checkpoint, or one that does not match the architecture."""


class DataError(RanetEdgeError):
    """A dataset path, image file or array that cannot be read or has the wrong layout."""


class ExportError(RanetEdgeError):
    """The ONNX export or its validation failed."""


class ValidationError(ExportError):
    """Exported graphs that do not compute what the PyTorch model computes.

    ``table`` holds every check made, passing or not (one row per exit and batch size, each
    with ``exit``, ``batch``, ``max_abs_diff``, ``max_rel_diff`` and ``passed``); ``summary``
    is one line naming the worst exit and the fix; ``str()`` is that line and the table.
    """

    def __init__(self, summary: str, table: Sequence[Any] = (), table_text: str = ""):
        super().__init__(summary)
        self.table = list(table)
        self.table_text = table_text

    @property
    def summary(self) -> str:
        """The one line naming the worst exit and the fix, without the table."""
        return str(self.args[0])

    def __str__(self) -> str:
        return f"{self.summary}\n{self.table_text}" if self.table_text else self.summary


class BundleError(RanetEdgeError):
    """A bundle (manifest plus graphs) that is missing, tampered with or malformed."""


class ProviderError(RanetEdgeError):
    """An execution provider that this onnxruntime build does not offer."""


class InputError(RanetEdgeError):
    """An input array with the wrong shape, dtype or values."""


class CalibrationError(RanetEdgeError):
    """Thresholds or budgets that cannot be met or are malformed."""


class ServeError(RanetEdgeError):
    """Ray or Ray Serve failed to start, connect or deploy."""


class MissingExtraError(RanetEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install.

    Also an ImportError, so code that guards an optional import catches it as usual."""


def require(module: str, extra: str):
    """Import ``module`` and return it; ``extra`` is the pip extra that installs it.

    Raises:
        MissingExtraError: ``module`` cannot be imported; the message gives the
            ``pip install 'ranet-edge[extra]'`` line (the ImportError is kept as the cause).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'ranet-edge[{extra}]'"
        ) from exc

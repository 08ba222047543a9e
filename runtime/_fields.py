"""Typed reads of parsed JSON (the manifest, the operating points): each read names the field's
path in its one-line :class:`~ranet_edge.errors.BundleError`.

The checks below take a value as ``json.loads`` gives it and answer True or False; JSON's
``true`` and ``false`` load as Python bools, which are ints, so the number checks refuse them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

REQUIRED = object()


def is_int(v: Any) -> bool:
    """A JSON integer (not a bool, not a float such as ``1.0``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A JSON number, integer or not (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_str(v: Any) -> bool:
    """A JSON string."""
    return isinstance(v, str)


def is_list(v: Any) -> bool:
    """A JSON array, of anything."""
    return isinstance(v, list)


def is_dict(v: Any) -> bool:
    """A JSON object."""
    return isinstance(v, dict)


def count(v: Any) -> bool:
    """An integer >= 0 (a size, a FLOP count, an exit index)."""
    return is_int(v) and v >= 0


def positive(v: Any) -> bool:
    """An integer >= 1."""
    return is_int(v) and v >= 1


def strings(v: Any) -> bool:
    """An array of strings (empty included)."""
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def dims(v: Any) -> bool:
    """A shape: a list of sizes, the first (the batch) possibly null."""
    return (isinstance(v, list) and len(v) >= 1 and (v[0] is None or positive(v[0]))
            and all(d is None or positive(d) for d in v[1:]))


def three_numbers(v: Any) -> bool:
    """Exactly three numbers (one per RGB channel)."""
    return isinstance(v, list) and len(v) == 3 and all(is_num(x) for x in v)


def three_positive(v: Any) -> bool:
    """Three numbers, each > 0 (a divisor per channel)."""
    return three_numbers(v) and all(x > 0 for x in v)


def or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``check`` that also accepts JSON ``null``."""
    return lambda v: v is None or check(v)


class Fields:
    """Typed reads of one JSON object: ``fields(name, check, expected[, default])`` returns the
    value, or raises one line naming ``where.name``, what was expected and ``fix``.

    Args:
        mpath: the file the object was read from, named in every message.
        obj: the parsed object.
        where: its path in the file (``"graphs[0]"``; empty for the top level).
        fix: what the user should do, ending every message.

    Raises:
        BundleError: when ``obj`` is not a JSON object.
    """

    def __init__(self, mpath: Path, obj: Any, where: str, fix: str = "re-export the bundle"):
        if not isinstance(obj, dict):
            raise BundleError(f"{mpath}: {where or 'the file'} is not an object; {fix}")
        self.mpath, self.obj, self.where, self.fix = mpath, obj, where, fix

    def __call__(self, name: str, check: Callable[[Any], bool], expected: str, default: Any = REQUIRED) -> Any:
        """The value of field ``name`` if ``check`` accepts it; ``default`` when the field is
        absent and a default is given (the default itself is not checked).

        Raises:
            BundleError: when the field is absent and required, or ``check`` refuses it (the
                message quotes the value, shortened, and ``expected``).
        """
        field = f"{self.where}.{name}" if self.where else name
        if name not in self.obj:
            if default is REQUIRED:
                raise BundleError(f"{self.mpath} is missing field {field}; {self.fix}")
            return default
        value = self.obj[name]
        if not check(value):
            raise BundleError(f"{self.mpath}: {field} is {short(value)}, expected {expected}; {self.fix}")
        return value


def short(value: Any) -> str:
    """``repr(value)`` cut to 80 characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

"""Typed reads of parsed JSON (the manifest, the operating points): each read names the field's
path in its one-line :class:`~ranet_edge.errors.BundleError`."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

REQUIRED = object()


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_list(v: Any) -> bool:
    return isinstance(v, list)


def is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def count(v: Any) -> bool:
    return is_int(v) and v >= 0


def positive(v: Any) -> bool:
    return is_int(v) and v >= 1


def strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def dims(v: Any) -> bool:
    """A shape: a list of sizes, the first (the batch) possibly null."""
    return (isinstance(v, list) and len(v) >= 1 and (v[0] is None or positive(v[0]))
            and all(d is None or positive(d) for d in v[1:]))


def three_numbers(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(is_num(x) for x in v)


def three_positive(v: Any) -> bool:
    return three_numbers(v) and all(x > 0 for x in v)


def or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


class Fields:
    """Typed reads of one JSON object: ``fields(name, check, expected[, default])`` returns the
    value, or raises one line naming ``where.name``, what was expected and ``fix``."""

    def __init__(self, mpath: Path, obj: Any, where: str, fix: str = "re-export the bundle"):
        if not isinstance(obj, dict):
            raise BundleError(f"{mpath}: {where or 'the file'} is not an object; {fix}")
        self.mpath, self.obj, self.where, self.fix = mpath, obj, where, fix

    def __call__(self, name: str, check: Callable[[Any], bool], expected: str, default: Any = REQUIRED) -> Any:
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
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

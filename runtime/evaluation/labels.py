"""Labels at exits of different class counts (numpy only).

A labelled set names the classes of the bundle's last exit (the manifest's ``num_classes``).
An exit of another class count (20 coarse classes at exit 0 before 100 fine ones) answers in
its own classes, so its answers can be scored only through a mapping from the labels' classes
to its own: a JSON file whose keys are class counts and whose values give, for each of the
``num_classes`` classes, its class at the exits of that count::

    {"20": [4, 1, 14, 8, 0, ...]}      (100 values: CIFAR-100's coarse class of each fine class)

A plain list is read as the mapping of the one other class count a bundle has. With a
mapping, a sample counts as right at such an exit when its answer is the mapped class of its
label: a chain's accuracy then mixes right coarse answers with right fine ones (a sample that
leaves at a coarse exit is credited for its coarse class only). Without one, scoring refuses.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ranet_edge.errors import CalibrationError

__all__ = ["exit_labels", "read_label_map"]



def _fix(count: object = "COUNT", n: object = "N") -> str:
    return f'pass --label-map FILE, a JSON {{"{count}": [the class, among {count}, of each of the {n} label classes]}}'


def read_label_map(path: str | os.PathLike, exit_classes: Sequence[int], num_classes: int) -> dict[int, np.ndarray]:
    """The mapping file at ``path``, checked against the bundle: class count -> int64
    (``num_classes``,) array of classes below that count.

    Raises:
        CalibrationError: the file is missing or not JSON, a count no exit has (or the labels'
            own), a list of another length than ``num_classes``, or a class outside its count.
    """
    where = f"label map {path}"
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read {where} ({type(exc).__name__}: {str(exc)[:120]}); {_fix()}") from exc
    others = sorted({c for c in exit_classes if c != num_classes})
    if isinstance(raw, list):
        if len(others) != 1:
            raise CalibrationError(f"{where} is a list, but the exits have {len(others)} class counts besides the "
                                   f"labels' {num_classes} ({others}); key each list by its count")
        raw = {str(others[0]): raw}
    if not isinstance(raw, dict):
        raise CalibrationError(f"{where} must be a JSON object or list, got {type(raw).__name__}; {_fix()}")
    out = {}
    for key, values in raw.items():
        count = int(key) if str(key).isdigit() else None
        if count not in others:
            raise CalibrationError(f"{where} maps to {key!r} classes, but the exits of another count than the "
                                   f"labels' {num_classes} have {others}; key the lists by those counts")
        ok = isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if not ok or len(values) != num_classes:
            raise CalibrationError(f"{where}: {key!r} must list {num_classes} whole numbers (the class of each of "
                                   f"the labels' {num_classes} classes), got {str(values)[:60]}")
        arr = np.asarray(values, np.int64)
        if arr.min() < 0 or arr.max() >= count:
            raise CalibrationError(f"{where}: {key!r} holds class {int(arr.max() if arr.max() >= count else arr.min())}, "
                                   f"outside 0..{count - 1}")
        out[count] = arr
    return out


def exit_labels(labels: np.ndarray, exit_classes: Sequence[int], num_classes: int,
                mapping: dict[int, np.ndarray] | None = None) -> list[np.ndarray]:
    """Each exit's labels in its own classes: ``labels`` where the exit has ``num_classes``
    classes, else ``labels`` mapped by ``mapping[count]``.

    Raises:
        CalibrationError: an exit of another count with no mapping for it (the message names
            the exit, both counts and the fix).
    """
    out = []
    for k, count in enumerate(exit_classes):
        if count == num_classes:
            out.append(labels)
            continue
        if not mapping or count not in mapping:
            raise CalibrationError(f"exit {k} answers in {count} classes but the labels name the last exit's "
                                   f"{num_classes}: scoring it needs a mapping from those {num_classes} classes "
                                   f"to its {count}; {_fix(count, num_classes)}")
        out.append(mapping[count][labels])
    return out

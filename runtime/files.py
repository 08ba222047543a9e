"""Bundle files: sha256 digests and atomic writes (a temporary path, then a rename)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

__all__ = [
    "replace_dir", "resolve_inside", "sha256_file", "staged_dir", "write_json_atomic",
]


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks.

    Raises:
        OSError: when the file cannot be read.
    """
    import hashlib  # here, not at import time: see runtime/__init__.py

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_inside(root: Path, rel: Any, listed_in: Path) -> Path:
    """``root/rel``, resolved, where ``rel`` is a path that the file ``listed_in`` (the
    manifest) names and that must stay inside the bundle directory ``root``.

    Raises:
        BundleError: when ``rel`` is not a non-empty relative path, or leads outside ``root``
            (through ``..`` or a symbolic link).
    """
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise BundleError(f"graph path {rel!r} in {listed_in} must be relative to the bundle")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"graph path {rel!r} escapes the bundle directory {root}; refusing to load it")
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write strict JSON (sorted keys, stable formatting) to a temporary file beside ``path``
    and rename it over ``path``: a reader sees the old file or the new one, never a part.

    Raises:
        ValueError: when ``obj`` holds NaN or an infinity (strict JSON has neither); nothing
            is written.
        TypeError: when ``obj`` holds something JSON cannot encode.
        OSError: when the directory is not writable.
    """
    import tempfile  # writers only; the runtime's import stays light

    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``, replacing what was there: the old
    directory is renamed aside (``.<name>.old``) and removed once the new one is in place, so
    ``out`` never holds a mix of the two."""
    import shutil

    if out.exists():
        trash = out.with_name(f".{out.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    os.chmod(out, 0o755)


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` (so the rename never crosses devices) that becomes
    ``out`` when the block finishes (:func:`replace_dir`) and is removed if it raises."""
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_assets(root: Path, mpath: Path, assets: Any, verify: bool) -> None:
    """The manifest's ``assets`` (file name -> {sha256, bytes}): each file present inside the
    bundle and, with ``verify``, matching its sha256.

    Raises:
        BundleError: ``assets`` is malformed, or a file is missing or (``verify``) modified.
    """
    if not isinstance(assets, dict):
        raise BundleError(f"{mpath}: assets is not an object of file name -> {{sha256, bytes}}; re-export the bundle")
    for name, entry in assets.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{mpath}: assets[{name!r}] has no sha256; re-export the bundle")
        path = resolve_inside(root, name, mpath)
        if not path.is_file():
            raise BundleError(f"asset {name} listed in {mpath} is missing; re-export the bundle")
        if verify and sha256_file(path) != entry["sha256"]:
            raise BundleError(f"asset {name} fails its sha256 check: it was modified; re-export the bundle")

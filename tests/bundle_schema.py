"""Validate bundles against the shipped JSON Schema (ranet_edge/schemas), for the tests.

:func:`install` wraps ``os.replace``, the rename every ranet-edge writer ends with (a
manifest or operating points file written to a temporary path and renamed, a bundle
directory staged and renamed into place), so every ``manifest.json`` and ``thresholds.json``
the product writes during the session is validated as it lands. Files a test writes by hand
(the corrupt manifests of the refusal tests) are not renamed into place and so not checked.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ranet_edge.schemas import load_schema

COUNTS: Counter = Counter()


class SchemaViolation(AssertionError):
    """A file ranet-edge wrote does not match the bundle contract."""


def validators() -> dict:
    import jsonschema

    return {name: jsonschema.Draft202012Validator(load_schema(name)) for name in ("manifest", "thresholds")}


_VALIDATORS: dict | None = None


def validate_file(path: Path) -> None:
    """Check ``path`` (a manifest.json or thresholds.json) against its schema."""
    global _VALIDATORS
    _VALIDATORS = _VALIDATORS or validators()
    kind = "manifest" if path.name == "manifest.json" else "thresholds"
    data = json.loads(path.read_text())
    errors = sorted(_VALIDATORS[kind].iter_errors(data), key=lambda e: e.json_path)
    if errors:
        raise SchemaViolation(f"{path} breaks {kind}.schema.json: "
                              + "; ".join(f"{e.json_path}: {e.message[:200]}" for e in errors[:5]))
    COUNTS[kind] += 1


def validate_bundle(bundle: Path) -> None:
    for name in ("manifest.json", "thresholds.json"):
        if (bundle / name).is_file():
            validate_file(bundle / name)


def install() -> None:
    """Wrap ``os.replace`` (idempotent)."""
    real = os.replace
    if getattr(real, "_bundle_schema", False):
        return

    def replace(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        target = Path(os.fsdecode(dst))
        if target.name.startswith("."):  # a staging directory, or the old bundle moved aside
            return
        if target.name in ("manifest.json", "thresholds.json") and not target.parent.name.startswith("."):
            validate_file(target)
        elif target.is_dir() and (target / "manifest.json").is_file():
            validate_bundle(target)

    replace._bundle_schema = True
    os.replace = replace

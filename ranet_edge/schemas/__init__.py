"""The bundle contract as JSON Schema (draft 2020-12), shipped with the package.

``manifest.schema.json`` describes every field of a bundle's ``manifest.json`` and
``thresholds.schema.json`` every field of its ``thresholds.json``, for the schema version
the runtime reads (:data:`SCHEMA_VERSION`). Drivers in other languages validate against the
same files (the JavaScript package's tests do). Reading a schema needs only the standard
library; validating needs a JSON Schema validator such as ``jsonschema``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_SCHEMA", "SCHEMA_VERSION", "THRESHOLDS_SCHEMA", "load_schema"]

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 1  # the manifest's schema_version these files describe (runtime/manifest.py)
MANIFEST_SCHEMA = HERE / "manifest.schema.json"
THRESHOLDS_SCHEMA = HERE / "thresholds.schema.json"


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``"manifest"`` or ``"thresholds"`` as a dict."""
    paths = {"manifest": MANIFEST_SCHEMA, "thresholds": THRESHOLDS_SCHEMA}
    if name not in paths:
        raise ValueError(f"unknown schema {name!r}; use one of {', '.join(paths)}")
    return json.loads(paths[name].read_text())

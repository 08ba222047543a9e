"""The bundle contract as JSON Schema (ranet_edge/schemas): complete, described, and what the
shipped bundles follow. Every bundle the suite writes is validated too (tests/bundle_schema.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

import bundle_schema  # noqa: E402

from ranet_edge.assets import DEFAULT_BUNDLE  # noqa: E402
from ranet_edge.schemas import MANIFEST_SCHEMA, SCHEMA_VERSION, THRESHOLDS_SCHEMA, load_schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = [DEFAULT_BUNDLE, ROOT / "benchmarks/comparison/ranet.bundle", ROOT / "benchmarks/comparison/msdnet.bundle"]


@pytest.mark.parametrize("name", ["manifest", "thresholds"])
def test_schemas_are_valid_draft_2020_12(name):
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


def test_schema_version_is_the_runtimes():
    from ranet_edge.runtime.manifest import FORMAT
    from ranet_edge.runtime.manifest import SCHEMA_VERSION as RUNTIME

    schema = load_schema("manifest")
    assert SCHEMA_VERSION == RUNTIME == schema["properties"]["schema_version"]["const"]
    assert schema["properties"]["format"]["const"] == FORMAT
    assert f"schema_version {RUNTIME}" in schema["title"] and schema["$id"].endswith(f":{RUNTIME}")


def _properties(node, where="$"):
    """Every (path, property schema) of the schema, following objects, arrays and $defs."""
    if not isinstance(node, dict):
        return
    for key, sub in node.get("properties", {}).items():
        yield f"{where}.{key}", sub
        yield from _properties(sub, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _properties(node[key], f"{where}[]")
    for key, sub in node.get("$defs", {}).items():
        yield from _properties(sub, f"#{key}")
    for sub in node.get("oneOf", []) + node.get("anyOf", []):
        yield from _properties(sub, where)


@pytest.mark.parametrize("name", ["manifest", "thresholds"])
def test_every_field_is_typed_and_described(name):
    schema = load_schema(name)
    defs = schema.get("$defs", {})
    for path, sub in _properties(schema):
        target = defs[sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
        assert sub.get("description") or target.get("description"), f"{name}: {path} has no description"
        assert {"type", "const", "enum", "oneOf", "anyOf", "$ref"} & set(sub), f"{name}: {path} has no type"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_committed_bundles_follow_the_contract(bundle):
    bundle_schema.validate_bundle(bundle)  # raises SchemaViolation, naming the field


def test_every_field_the_shipped_bundle_writes_is_in_the_schema():
    """additionalProperties is false: a field a writer adds without describing it fails here."""
    schema = load_schema("manifest")
    data = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert set(data) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def _bad(data: dict, change) -> dict:
    data = json.loads(json.dumps(data))
    change(data)
    return data


@pytest.mark.parametrize("change, where", [
    (lambda d: d["exits"][0].pop("run_flops"), "run_flops"),
    (lambda d: d["graphs"][0].update(sha256="abc"), "sha256"),
    (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "mean"),
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.update(precision="int4"), "precision"),
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d["graphs"][0].update(path="/etc/passwd"), "path"),
])
def test_a_broken_manifest_is_refused_naming_the_field(tmp_path, change, where):
    data = _bad(json.loads((DEFAULT_BUNDLE / "manifest.json").read_text()), change)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(bundle_schema.SchemaViolation, match=where):
        bundle_schema.validate_file(tmp_path / "manifest.json")


@pytest.mark.parametrize("change", [
    lambda d: d["points"]["p0.5"].update(thresholds=[1.5, None]),
    lambda d: d["points"]["p0.5"].pop("method"),
    lambda d: d.update(format="other"),
])
def test_a_broken_thresholds_file_is_refused(tmp_path, change):
    data = _bad(json.loads((DEFAULT_BUNDLE / "thresholds.json").read_text()), change)
    (tmp_path / "thresholds.json").write_text(json.dumps(data))
    with pytest.raises(bundle_schema.SchemaViolation):
        bundle_schema.validate_file(tmp_path / "thresholds.json")


def test_what_the_product_renames_into_place_is_validated(tmp_path):
    """The session hook: a manifest written through the product's atomic write is checked."""
    from ranet_edge.runtime.files import write_json_atomic

    assert getattr(os.replace, "_bundle_schema", False), "conftest did not install the hook"
    with pytest.raises(bundle_schema.SchemaViolation, match="breaks manifest.schema.json"):
        write_json_atomic(tmp_path / "manifest.json", {"format": "nope"})
    before = bundle_schema.COUNTS["thresholds"]
    write_json_atomic(tmp_path / "thresholds.json", json.loads((DEFAULT_BUNDLE / "thresholds.json").read_text()))
    assert bundle_schema.COUNTS["thresholds"] == before + 1


def test_schemas_ship_in_the_package():
    assert MANIFEST_SCHEMA.parent.name == THRESHOLDS_SCHEMA.parent.name == "schemas"
    assert MANIFEST_SCHEMA.is_relative_to(ROOT / "ranet_edge")

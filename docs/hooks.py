"""MkDocs hooks.

- The API reference reads the package as installed: ``export/`` and ``runtime/`` are mapped
  into ``ranet_edge`` by setuptools' ``package_dir``, which griffe (mkdocstrings) does not
  follow, so the package is laid out once more, as links, under ``build/api-src/``.
- The home page (index.md) is the README, its links rewritten from the repository's paths
  (``docs/x.md``, ``CHANGELOG.md``) to the site's.
- ``<!-- schema-table:manifest -->`` (or ``thresholds``) in a page becomes a table of every
  field of that JSON Schema (ranet_edge/schemas), so the contract page cannot drift from it.
- The benchmark figures (``benchmarks/results/*.png``) are served as ``images/*.png``: the
  pages show the very files the benchmarks write, with no copy in ``docs/``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
API_SRC = ROOT / "build" / "api-src"
FIGURES = ("eval.png", "ranet_vs_msdnet.png")
MAPPED = {"export": ROOT / "export", "runtime": ROOT / "runtime"}  # setup.cfg's package_dir


def _lay_out_package() -> None:
    shutil.rmtree(API_SRC, ignore_errors=True)
    package = API_SRC / "ranet_edge"
    package.mkdir(parents=True)
    for entry in (ROOT / "ranet_edge").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    for name, folder in MAPPED.items():
        os.symlink(folder, package / name)


_lay_out_package()


def on_files(files, config):
    for name in FIGURES:
        files.append(File.generated(config, f"images/{name}", abs_src_path=str(ROOT / "benchmarks" / "results" / name)))
    return files


def _type_of(node: dict, defs: dict) -> str:
    if "$ref" in node:
        return _type_of(defs[node["$ref"].split("/")[-1]], defs)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " / ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_type_of(n, defs) for n in node.get("oneOf", node.get("anyOf", [])))
    kind = node.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    return " or ".join("object" if k == "object" else f"array of {_type_of(node['items'], defs)}"
                       if k == "array" and isinstance(node.get("items"), dict) else k for k in kinds)


def _rows(node: dict, defs: dict, prefix: str, required: set[str]):
    for name, sub in node.get("properties", {}).items():
        target = defs[sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
        desc = (sub.get("description") or target.get("description", "")).replace("|", "\\|").replace("\n", " ")
        path = f"{prefix}{name}"
        yield f"| `{path}` | {_type_of(sub, defs)} | {'yes' if name in required else ''} | {desc} |"
        for child in (target, target.get("items") if isinstance(target.get("items"), dict) else None):
            if child is None:
                continue
            child = defs[child["$ref"].split("/")[-1]] if "$ref" in child else child
            if "properties" in child:
                sep = "[]." if child is not target else "."
                yield from _rows(child, defs, f"{path}{sep}", set(child.get("required", [])))
        extra = target.get("additionalProperties")
        if isinstance(extra, dict):
            extra = defs[extra["$ref"].split("/")[-1]] if "$ref" in extra else extra
            if "properties" in extra:
                yield from _rows(extra, defs, f"{path}.NAME.", set(extra.get("required", [])))
            elif isinstance(extra.get("additionalProperties"), dict) and "properties" in extra["additionalProperties"]:
                inner = extra["additionalProperties"]
                yield from _rows(inner, defs, f"{path}.NAME.NAME.", set(inner.get("required", [])))


def schema_table(name: str) -> str:
    schema = json.loads((ROOT / "ranet_edge" / "schemas" / f"{name}.schema.json").read_text())
    head = ["| field | type | required | what it is |", "| --- | --- | --- | --- |"]
    return "\n".join(head + list(_rows(schema, schema.get("$defs", {}), "", set(schema.get("required", [])))))


def readme_for_site() -> str:
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\(docs/([^)]*)\)", r"](\1)", text)
    return text.replace("](CHANGELOG.md)", "](changelog.md)")


def on_page_markdown(markdown, page, config, files):
    if markdown.lstrip().startswith("<!-- readme:"):
        markdown = readme_for_site()
    return re.sub(r"<!-- schema-table:(manifest|thresholds) -->", lambda m: schema_table(m.group(1)), markdown)


_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):\s*(?=<code>)")


def on_page_content(html, page, config, files):
    """Docstrings name objects the Sphinx way (:class:`X`); on the site they read as `X`."""
    return _ROLE.sub("", html)

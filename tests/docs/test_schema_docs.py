"""The configuration page is generated from the config schema: every key, with its default and description."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFS = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["$defs"]


def schema_keys(node: dict, prefix: str = ""):
    """(dotted path, schema) of every key, walked independently of the renderer."""
    for name, prop in node.get("properties", {}).items():
        yield prefix + name, prop
        yield from nested_keys(prop, prefix + name)


def nested_keys(prop: dict, path: str):
    if "$ref" in prop:
        prop = DEFS[prop["$ref"].removeprefix("#/$defs/")]
    if "properties" in prop:
        yield from schema_keys(prop, f"{path}.")
    if isinstance(prop.get("additionalProperties"), dict):
        yield from nested_keys(prop["additionalProperties"], f"{path}.<id>")
    if isinstance(prop.get("items"), dict):
        yield from nested_keys(prop["items"], f"{path}[]")


def rows(page: str) -> dict[str, str]:
    """The table rows of the rendered page, by key path."""
    return {line[3:].split("`")[0]: line for line in page.splitlines() if line.startswith("| `")}


def test_every_schema_key_appears_with_its_default_and_description():
    from probes.workflow.schema_docs import render_schema

    page = rows(render_schema(SCHEMA))
    keys = list(schema_keys(yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))))
    assert len(keys) > 100 and len(page) == len(keys)
    for path, prop in keys:
        assert path in page, f"{path} is not on the configuration page"
        if "default" in prop:
            assert f"`{json.dumps(prop['default'], ensure_ascii=False)}`" in page[path], f"{path}: default"
        assert " ".join(prop["description"].split())[:40].split("|")[0].split("<")[0] in page[path]


def test_a_key_without_a_description_fails_naming_it(tmp_path):
    from probes.workflow.schema_docs import render_schema

    probe = {"type": "object", "description": "x", "properties": {"folds": {"type": "integer"}}}
    schema = {"properties": {"probe": probe}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema), encoding="utf-8")
    with pytest.raises(ValueError, match=r"probe\.folds"):
        render_schema(tmp_path / "schema.yaml")


def test_cells_survive_markdown(tmp_path):
    """Pipes and angle brackets in a description neither split the table nor vanish as HTML tags."""
    from probes.workflow.schema_docs import render_schema

    schema = {
        "required": ["k"],
        "properties": {
            "k": {"type": "number", "default": 1, "minimum": 0, "description": "|a − b| in results/<model>; `x|y`"}
        },
    }
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema), encoding="utf-8")
    row = rows(render_schema(tmp_path / "schema.yaml"))["k"]
    assert row == r"| `k` (required) | number | `1` | ≥ 0 | \|a − b\| in results/&lt;model&gt;; `x|y` |"

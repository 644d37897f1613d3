"""The configuration reference, rendered from ``workflow/schemas/config.schema.yaml`` for the documentation.

Every key of the schema becomes one row: its dotted path (``probe.seeds``; ``<id>`` stands for a key the user
chooses, such as a model or dataset id, and ``[]`` for the items of a list: ``perturbations.noise[].rate``),
its type, its default, the values it allows and its description. A key without a description is an error, so
the reference cannot silently miss one. The MkDocs hook ``docs/hooks/config_reference.py`` calls
:func:`render_schema` at build time; the module needs only the standard library and PyYAML.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
NO_DEFAULT = "–"


@dataclass(frozen=True)
class KeyDoc:
    """One documented key of the config schema."""

    path: str
    type: str
    default: str
    allowed: str
    description: str
    required: bool


def schema_keys(schema: dict[str, Any]) -> list[KeyDoc]:
    """Every key of the schema, depth first in schema order; raises ``ValueError`` naming undescribed keys."""
    keys: list[KeyDoc] = []
    undescribed: list[str] = []
    _walk(_inlined(schema, schema.get("$defs", {})), "", keys, undescribed)
    if undescribed:
        raise ValueError(f"config schema keys without a description: {', '.join(undescribed)}")
    return keys


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local ``$ref`` replaced by its definition, so a shared item is documented where used."""
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inlined(defs[node["$ref"].removeprefix("#/$defs/")], defs)
    return {key: _inlined(value, defs) for key, value in node.items() if key != "$defs"}


def _walk(node: dict[str, Any], prefix: str, keys: list[KeyDoc], undescribed: list[str]) -> None:
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        if not prop.get("description"):
            undescribed.append(path)
        keys.append(
            KeyDoc(
                path=path,
                type=_type(prop),
                default=json.dumps(prop["default"], ensure_ascii=False) if "default" in prop else NO_DEFAULT,
                allowed=_allowed(prop),
                description=" ".join(str(prop.get("description", "")).split()),
                required=name in node.get("required", []),
            )
        )
        _children(prop, path, keys, undescribed)


def _children(prop: dict[str, Any], path: str, keys: list[KeyDoc], undescribed: list[str]) -> None:
    """Nested keys: an object's properties, a map's entries (``<id>``) and a list's items (``[]``)."""
    if "properties" in prop:
        _walk(prop, f"{path}.", keys, undescribed)
    entries = prop.get("additionalProperties")
    if isinstance(entries, dict):
        _children(entries, f"{path}.<id>", keys, undescribed)
    items = prop.get("items")
    if isinstance(items, dict) and ("properties" in items or "items" in items):
        _children(items, f"{path}[]", keys, undescribed)


def _type(prop: dict[str, Any]) -> str:
    if "oneOf" in prop:
        return " or ".join(_type(option) for option in prop["oneOf"])
    types = prop.get("type", "any")
    types = types if isinstance(types, list) else [types]
    if "array" in types and isinstance(prop.get("items"), dict) and "type" in prop["items"]:
        types = [f"array of {_type(prop['items'])}" if kind == "array" else kind for kind in types]
    if "object" in types and isinstance(prop.get("additionalProperties"), dict):
        types = [f"map of {_type(prop['additionalProperties'])}" if kind == "object" else kind for kind in types]
    return " or ".join(types)


def _allowed(prop: dict[str, Any]) -> str:
    """The enum, range or pattern a value must satisfy (of a list's items for a list)."""
    parts = [_allowed(option) for option in prop.get("oneOf", [])]
    if "enum" in prop:
        parts.append(", ".join(f"`{_literal(value)}`" for value in prop["enum"]))
    bounds = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}
    parts += [f"{sign} {prop[bound]}" for bound, sign in bounds.items() if bound in prop]
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    items = prop.get("items")
    if isinstance(items, dict) and "properties" not in items and _allowed(items):
        parts.append(f"each {_allowed(items)}")
    return "; ".join(part for part in parts if part)


def _literal(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _prose(text: str) -> str:
    """Markdown-safe table-cell text: HTML-escaped and pipes escaped outside code spans, code spans kept."""
    pieces = re.split(r"(`[^`]*`)", text)
    return "".join(
        piece if piece.startswith("`") else html.escape(piece, quote=False).replace("|", r"\|") for piece in pieces
    )


def _code(text: str) -> str:
    return f"`{text}`" if text and text != NO_DEFAULT else text


def render_schema(path: str | Path = SCHEMA) -> str:
    """The configuration reference as Markdown: the schema's description, the top-level scalars, then one table per
    section (``probe``, ``sae``, ...), one row per key."""
    import yaml

    schema = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    sections: dict[str, list[KeyDoc]] = {}
    for key in schema_keys(schema):
        sections.setdefault(re.split(r"[.\[]", key.path)[0], []).append(key)
    top_level = [rows[0] for rows in sections.values() if len(rows) == 1]
    groups = [("Top-level keys", top_level)] + [(f"`{name}`", rows) for name, rows in sections.items() if len(rows) > 1]
    lines = [" ".join(schema.get("description", "").split()), ""]
    for title, rows in groups:
        lines += [f"## {title}", "", "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for key in rows:
            path = f"`{key.path}` (required)" if key.required else f"`{key.path}`"
            cells = [path, key.type, _code(key.default), _prose(key.allowed), _prose(key.description)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)

"""MkDocs hook: the API reference must show every name in ``probes.__all__``.

mkdocstrings leaves out, without a warning, a name it cannot resolve; this hook reads ``__all__`` from
``probes/__init__.py`` (statically, without importing the package) and fails the build when a name has no
entry on the rendered API page.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.exceptions import PluginError

INIT = Path(__file__).resolve().parents[2] / "probes" / "__init__.py"


def public_names() -> list[str]:
    for node in ast.parse(INIT.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def on_post_page(output, page, config):
    if page.file.src_uri != "api.md":
        return output
    missing = [name for name in public_names() if f'id="probes.{name}"' not in output]
    if missing:
        raise PluginError(f"docs/api.md: names in probes.__all__ missing from the API reference: {missing}")
    return output

"""MkDocs hook: the configuration page, rendered from workflow/schemas/config.schema.yaml at build time.

``docs/configuration.md`` holds a short introduction and the marker below; every build replaces the marker by
:func:`probes.workflow.schema_docs.render_schema`, which fails the build when a schema key has no description.
The renderer is loaded from its file, so building the site imports neither the package nor its model libraries.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[2]
RENDERER = REPO / "probes" / "workflow" / "schema_docs.py"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MARKER = "<!-- config-reference -->"


def _renderer():
    spec = importlib.util.spec_from_file_location("probes_schema_docs", RENDERER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "configuration.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/configuration.md lost its {MARKER} marker")
    try:
        reference = _renderer().render_schema(SCHEMA)
    except ValueError as error:  # a key without a description: fail the build with the schema's own words
        raise PluginError(f"{SCHEMA.relative_to(REPO)}: {error}") from error
    return markdown.replace(MARKER, reference)


def on_serve(server, config, builder):
    for path in (SCHEMA, RENDERER):
        server.watch(str(path))
    return server

"""HTML for the Snakemake report, in one place: table pages and the cells of the top-latent tables.

The report shows images and HTML inline but offers CSV or markdown only as a download, so every table that
is a report item is also written as a small self-contained HTML page beside its CSV.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import pandas as pd

STYLE = """
body { font: 13px/1.45 system-ui, sans-serif; margin: 14px; color: #1e293b; }
h1 { font-size: 16px; margin: 0 0 6px; } h2 { font-size: 14px; margin: 18px 0 6px; }
p { max-width: 70em; color: #475569; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e2e8f0; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #f1f5f9; }
tbody tr:hover { background: #f8fafc; }
"""


def html_page(
    title: str, sections: Mapping[str, pd.DataFrame], note: str = "", escape: bool = True, digits: int = 4
) -> str:
    """One page with a table per section; ``escape=False`` for cells that already hold escaped HTML."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f"<p>{note if not escape else html.escape(note)}</p>")
    for heading, frame in sections.items():
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(
            frame.to_html(index=False, escape=escape, border=0, na_rep="", float_format=lambda v: f"{v:.{digits}g}")
        )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def cell(text: str) -> str:
    """Text safe inside an HTML table cell, newlines shown as ⏎."""
    return html.escape(text.replace("\n", "⏎"))


def token_context(str_tokens: Sequence[str], position: int, before: int = 10, after: int = 3) -> str:
    """A token's context for an HTML table cell, with the token itself in bold."""
    left = cell("".join(str_tokens[max(1, position - before) : position]))
    right = cell("".join(str_tokens[position + 1 : position + 1 + after]))
    return f"{left}<b>{cell(str_tokens[position]) or '∅'}</b>{right}"


def top_latents_page(title: str, classes: Sequence[str], sections: Mapping[str, list[dict]]) -> str:
    """The top latents of :func:`probes.sae.top_latents`, one table per SAE layer."""
    first, second = (cell(name) for name in classes)
    tables = {
        heading: pd.DataFrame(
            {
                "latent": row["latent"],
                "favours": cell(row["favours"]),
                f"mean act. ({first} / {second})": f"{row['mean'][0]:.3f} / {row['mean'][1]:.3f}",
                f"fires on ({first} / {second})": f"{row['firing'][0]:.0%} / {row['firing'][1]:.0%}",
                "top task examples": "<br>".join(
                    f"{cell(text)} ({label}, {value:.2f})" for text, label, value in row["task_examples"]
                )
                or "–",
                "top held-out corpus contexts": "<br>".join(
                    f"{token_context(tokens, position)} ({value:.2f})"
                    for tokens, position, value in row["corpus_examples"]
                )
                or "–",
            }
            for row in latents
        )
        for heading, latents in sections.items()
    }
    note = (
        f"Classes: 0 = <code>{first}</code>, 1 = <code>{second}</code>. Latents ranked by |mean difference| "
        "between the classes over all rows; activations in parentheses; the token a corpus context ends on is in bold."
    )
    return html_page(title, tables, note, escape=False)

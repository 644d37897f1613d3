"""HTML pages for the tables in the Snakemake report.

The report shows images and HTML inline but offers CSV or markdown only as a download, so every table that
is a report item is also written as a small self-contained HTML page beside its CSV.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping

import pandas as pd

from probes.io import atomic_path

STYLE = """
body { font: 13px/1.45 system-ui, sans-serif; margin: 14px; color: #1e293b; }
h1 { font-size: 16px; margin: 0 0 6px; } h2 { font-size: 14px; margin: 18px 0 6px; }
p { max-width: 70em; color: #475569; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e2e8f0; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #f1f5f9; }
tbody tr:hover { background: #f8fafc; }
"""


def html_page(title: str, sections: Mapping[str, pd.DataFrame], note: str = "", escape: bool = True, digits: int = 4) -> str:
    """One page with a table per section; ``escape=False`` for cells that already hold escaped HTML."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f"<p>{note if not escape else html.escape(note)}</p>")
    for heading, frame in sections.items():
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(frame.to_html(index=False, escape=escape, border=0, na_rep="", float_format=lambda v: f"{v:.{digits}g}"))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_table(
    frame: pd.DataFrame,
    csv: str | os.PathLike,
    page: str | os.PathLike,
    title: str,
    note: str = "",
    float_format: str | None = "%.6g",
) -> None:
    """A table as CSV, for analysis, and as an HTML page, for the report."""
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)
    with atomic_path(page) as tmp:
        tmp.write_text(html_page(title, {"": frame}, note), encoding="utf-8")

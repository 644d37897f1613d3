"""HTML for the Snakemake report, in one place: table pages and the feature pages.

The report shows images and HTML inline but offers CSV or markdown only as a download, so every table that
is a report item is also written as a small self-contained HTML page beside its CSV. A summary with dozens of
columns opens with the few a reader decides on, each estimate beside its interval, and keeps the full table one
click below.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

STYLE = """
body { font: 13px/1.45 system-ui, sans-serif; margin: 14px; color: #1e293b; }
h1 { font-size: 16px; margin: 0 0 6px; } h2 { font-size: 14px; margin: 18px 0 6px; }
p { max-width: 70em; color: #475569; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e2e8f0; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #f1f5f9; }
tbody tr:hover { background: #f8fafc; }
details { margin-top: 12px; } summary { cursor: pointer; color: #1d4ed8; }
"""


def html_page(
    title: str,
    sections: Mapping[str, pd.DataFrame],
    note: str = "",
    escape: bool = True,
    digits: int = 4,
    lead: Mapping[str, str] | None = None,
) -> str:
    """One page with a table per section; ``escape=False`` for cells that already hold escaped HTML.

    ``lead`` (column: header) puts those columns first, so the decision is on screen: each table opens with
    them and holds every column in a ``<details>`` block below."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f"<p>{note if not escape else html.escape(note)}</p>")

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, escape=escape, border=0, na_rep="", float_format=lambda v: f"{v:.{digits}g}")

    for heading, frame in sections.items():
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        if lead is None:
            body.append(table(frame))
        else:
            body.append(table(lead_columns(frame, lead)))
            body.append(f"<details><summary>All {len(frame.columns)} columns</summary>\n{table(frame)}\n</details>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def lead_columns(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """The ``columns`` of ``frame`` that it has (a run without transcoders lacks theirs), renamed to their
    headers, an estimate with ``<column>_lo``/``<column>_hi`` in one cell as ``0.91 [0.88, 0.94]``."""
    lead = {}
    for column, header in columns.items():
        if column not in frame:
            continue
        values = frame[column]
        if {f"{column}_lo", f"{column}_hi"} <= set(frame.columns):
            lows, highs = frame[f"{column}_lo"], frame[f"{column}_hi"]
            lead[header] = [with_interval(*estimate) for estimate in zip(values, lows, highs)]
        else:
            lead[header] = [_number(value) for value in values]
    return pd.DataFrame(lead, index=frame.index)


def with_interval(value, lo, hi) -> str:
    """An estimate and its interval in one cell; only the estimate where the interval is missing."""
    if pd.isna(value):
        return ""
    if pd.isna(lo) or pd.isna(hi):
        return _number(value)
    return f"{_number(value)} [{_number(lo)}, {_number(hi)}]"


def _number(value) -> str:
    """Three significant digits, whole numbers without a decimal point, booleans as yes/no, missing as blank."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if pd.isna(value):
        return ""
    if not isinstance(value, int | float | np.number):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def cell(text: str) -> str:
    """Text safe inside an HTML table cell, newlines shown as ⏎."""
    return html.escape(text.replace("\n", "⏎"))


def token_context(str_tokens: Sequence[str], position: int, before: int = 10, after: int = 3) -> str:
    """A token's context for an HTML table cell, with the token itself in bold."""
    left = cell("".join(str_tokens[max(1, position - before) : position]))
    right = cell("".join(str_tokens[position + 1 : position + 1 + after]))
    return f"{left}<b>{cell(str_tokens[position]) or '∅'}</b>{right}"


HISTOGRAM_COLOURS = ("#1b9e77", "#d95f02", "#94a3b8")


def histogram_svg(edges: Sequence[float], densities: Mapping[str, Sequence[float]], width: int = 180) -> str:
    """A small inline SVG of densities on shared bins: one outline per series, the last one filled grey."""
    height, names = 54, list(densities)
    peak = max((max(values) for values in densities.values() if len(values)), default=0.0) or 1.0
    n_bins = len(edges) - 1
    paths = []
    for index, name in enumerate(names):
        colour = HISTOGRAM_COLOURS[index % len(HISTOGRAM_COLOURS)]
        points = [f"0,{height}"]
        for b, value in enumerate(densities[name]):
            top = height - (height - 4) * value / peak
            points += [f"{width * b / n_bins:.1f},{top:.1f}", f"{width * (b + 1) / n_bins:.1f},{top:.1f}"]
        points.append(f"{width},{height}")
        fill = f'fill="{colour}" fill-opacity="0.35"' if index == len(names) - 1 and len(names) > 2 else 'fill="none"'
        paths.append(f'<polyline points="{" ".join(points)}" {fill} stroke="{colour}" stroke-width="1.2"/>')
    legend = " ".join(
        f'<span style="color:{HISTOGRAM_COLOURS[i % len(HISTOGRAM_COLOURS)]}">■ {cell(name)}</span>'
        for i, name in enumerate(names)
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="activation histogram">{"".join(paths)}</svg>'
        f"<br><small>{edges[0]:.2g} … {edges[-1]:.2g}<br>{legend}</small>"
    )


def feature_page(title: str, classes: Sequence[str], sections: Mapping[str, list[dict]]) -> str:
    """Feature pages of :func:`probes.dictionaries.features.top_features` for every kind: one table per section."""
    first, second = (cell(name) for name in classes)

    def tokens(pairs: Sequence[tuple[str, float]]) -> str:
        return ", ".join(f"<code>{cell(token)}</code> {value:+.2f}" for token, value in pairs)

    tables = {
        heading: pd.DataFrame(
            {
                "kind": row["kind"],
                "feature": row["feature"],
                "favours": cell(row["favours"]),
                f"mean act. ({first} / {second})": f"{row['mean'][0]:.3f} / {row['mean'][1]:.3f}",
                f"fires on ({first} / {second})": f"{row['firing'][0]:.0%} / {row['firing'][1]:.0%}",
                "activations": histogram_svg(row["histogram"]["edges"], row["histogram"]["densities"]),
                "writes (top logits)": tokens(row["writes"]["top"]),
                "writes (bottom logits)": tokens(row["writes"]["bottom"]),
                "top task examples": "<br>".join(
                    f"{cell(text)} ({label}, {value:.2f})" for text, label, value in row["task_examples"]
                )
                or "–",
                "top held-out corpus contexts": "<br>".join(
                    f"{token_context(str_tokens, position)} ({value:.2f})"
                    for str_tokens, position, value in row["corpus_examples"]
                )
                or "–",
            }
            for row in features
        )
        for heading, features in sections.items()
    }
    note = (
        f"Classes: 0 = <code>{first}</code>, 1 = <code>{second}</code>. Per layer, the MLP neurons, SAE latents "
        "and transcoder latents that best separate the classes over all task rows (standardised mean "
        "difference). Activations on the task's pooled token; histograms are densities over each class and "
        "over held-out corpus tokens; the token a corpus context fires on is in bold. What a feature writes is "
        "its output direction (neuron: W_out row; latent: decoder row) read through the unembedding."
    )
    return html_page(title, tables, note, escape=False)

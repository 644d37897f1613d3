"""The README's result tables, rendered from the summary tables, so that no result number is typed by hand.

The ``result_tables`` rule writes one markdown file per table under ``results/tables/markdown/``, every
estimate with its interval; ``python -m probes.result_tables`` puts each between its markers in the README:

    <!-- result-table: concept_depth -->
    ...
    <!-- /result-table -->
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

MARKER = re.compile(r"(<!-- result-table: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /result-table -->)", re.S)


def interval(frame: pd.Series | dict, name: str, digits: int = 2) -> str:
    """``value [lo, hi]`` of a column with ``_lo`` / ``_hi`` siblings; an en dash where the value is undefined."""
    value = frame[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    lo, hi = frame.get(f"{name}_lo"), frame.get(f"{name}_hi")
    text = f"{value:.{digits}f}"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return text
    return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _verdict(row) -> str:
    return "yes" if row["decodable"] else f"no (p = {row['null_p_value']:.2f})"


def concept_depth_table(summary: pd.DataFrame, weights: str) -> str:
    """Every model x task on its own weights and clean inputs: decodability, depths, accuracy, control, MDL."""
    from probes.perturbations import unperturbed

    rows = summary[unperturbed(summary, weights)]
    body = []
    for _, row in rows.iterrows():
        body.append(
            [
                row["model"],
                f"{row['dataset']} ({row['level']})",
                _verdict(row),
                interval(row, "half_rise_depth"),
                interval(row, "best_accuracy"),
                interval(row, "converging_depth"),
                f"{row['control']}: {interval(row, 'max_control_accuracy')}",
                interval(row, "max_selectivity"),
                interval(row, "max_mdl_compression", 1) if "max_mdl_compression" in row else "–",
            ]
        )
    header = [
        "model",
        "task",
        "decodable",
        "half-rise layer / L",
        "best accuracy",
        "converging layer / L",
        "control accuracy (max over layers)",
        "selectivity (max)",
        "MDL compression (max)",
    ]
    return markdown(header, body)


def levels_table(levels: pd.DataFrame) -> str:
    """Each model's mean half-rise and converging depth over the decodable tasks of each level."""
    body = [
        [
            model,
            level,
            f"{int(rows['decodable'].sum())} of {len(rows)}",
            interval(rows.iloc[0], "level_mean_half_rise_depth"),
            interval(rows.iloc[0], "level_mean_converging_depth"),
        ]
        for (model, level), rows in levels.groupby(["model", "level"], sort=False)
    ]
    header = ["model", "level", "decodable tasks", "mean half-rise layer / L", "mean converging layer / L"]
    return markdown(header, body)


def perturbations_table(effects: pd.DataFrame) -> str:
    """Each perturbed run against the unperturbed one: the shifts with their paired intervals."""
    body = [
        [
            row["model"],
            f"{row['dataset']} ({row['level']})",
            row["weights"] if row["noise"] == "clean" else f"noise {row['noise']}",
            "yes" if row["decodable"] else "no",
            interval(row, "half_rise_depth_shift"),
            interval(row, "converging_depth_shift"),
            interval(row, "best_accuracy_shift"),
        ]
        for _, row in effects.iterrows()
    ]
    header = [
        "model",
        "task",
        "perturbation",
        "decodable",
        "half-rise depth shift",
        "converging depth shift",
        "best accuracy shift",
    ]
    return markdown(header, body)


RENDERERS: dict[str, Callable[..., str]] = {
    "concept_depth": concept_depth_table,
    "concept_depth_by_level": levels_table,
    "concept_depth_perturbations": perturbations_table,
}


def update_readme(readme: str | Path, tables: str | Path) -> list[str]:
    """Replace the body between every ``result-table`` marker pair of ``readme`` by ``tables/<name>.md``.

    Returns the names replaced; a marker without its table is an error naming both, so a stale table cannot
    stay in the README unnoticed.
    """
    readme, tables = Path(readme), Path(tables)
    text = readme.read_text(encoding="utf-8")
    replaced = []

    def body(match: re.Match) -> str:
        path = tables / f"{match['name']}.md"
        if not path.is_file():
            raise FileNotFoundError(f"{readme}: marker {match['name']!r} has no rendered table {path}")
        replaced.append(match["name"])
        return match.group(1) + path.read_text(encoding="utf-8") + match.group(4)

    updated = MARKER.sub(body, text)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return replaced


def main() -> None:
    parser = argparse.ArgumentParser(description="Put the rendered result tables between the README's markers.")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--tables", default="results/tables/markdown")
    args = parser.parse_args()
    names = update_readme(args.readme, args.tables)
    print(f"{args.readme}: {len(names)} result tables from {args.tables} ({', '.join(names)})")


if __name__ == "__main__":
    main()

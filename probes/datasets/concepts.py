"""Loading of concept datasets, user tasks and the built-in ones alike, with errors that name the file.

The built-in tasks' generators live in :mod:`probes.datasets.tasks` (``python -m probes.datasets.tasks`` rewrites
``data/concepts/*.csv``). This module does not import them, because every job start loads a dataset
and none needs the generators.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probes.io import sha256_file

# The built-in tasks' levels of abstraction (docs/methods.md §2), in the order figures and tables use;
# "affective-lexical" marks an affective task that word lookup solves, kept as a baseline for "affective".
LEVELS = ("factual", "affective", "affective-lexical", "inferential")
# Every level a configured task may declare: the built-in ones and "other" for tasks that fit none.
TASK_LEVELS = (*LEVELS, "other")
# The columns a dataset config can name, in load_dataset's argument order: ``<role>_column``.
DATASET_ROLES = ("text", "label", "group", "type")


class DatasetError(ValueError):
    """A dataset a probe cannot use; the message starts with the file's path."""


@dataclass(frozen=True)
class LabelledTexts:
    path: Path
    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    checksum: str
    groups: np.ndarray | None = None  # int codes of the group column: rows that must share a CV fold
    types: np.ndarray | None = None  # int codes of the type column: the unit the control task labels


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": lambda path: pd.read_csv(path, keep_default_na=False, na_values=[""]),
    ".tsv": lambda path: pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""]),
    ".jsonl": lambda path: pd.read_json(path, lines=True, dtype=False),
}


def _rows(mask: pd.Series) -> str:
    """1-based data row numbers (the header is not counted), the first few, for an error message."""
    rows = (np.flatnonzero(mask.to_numpy()) + 1).tolist()
    return ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def load_dataset(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    type_column: str | None = None,
) -> LabelledTexts:
    """Read a user or built-in task and refuse, naming the file, anything a binary probe cannot use.

    ``group_column`` names rows that must stay in one CV fold (a minimal pair, a template);
    ``type_column`` the surface identity the control task assigns its random labels to (docs/methods.md §2).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(sorted(READERS))}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty")
    try:
        frame = reader(path)
    except Exception as error:  # pandas raises many parser error types
        raise DatasetError(f"{path}: cannot be parsed as {path.suffix[1:].upper()} ({error})") from error
    if len(frame) == 0:
        raise DatasetError(f"{path}: the dataset has no rows")
    roles = {"text": text_column, "label": label_column, "group": group_column, "type": type_column}
    missing = {role: column for role, column in roles.items() if column is not None and column not in frame.columns}
    if missing:
        named = ", ".join(f"{role} column {column!r}" for role, column in missing.items())
        raise DatasetError(f"{path}: missing {named}; the file has columns {[str(c) for c in frame.columns]}")
    texts = frame[text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        raise DatasetError(f"{path}: {empty.sum()} empty text(s) in column {text_column!r}, data rows {_rows(empty)}")
    labels = frame[label_column]
    missing_labels = labels.isna()
    if missing_labels.any():
        raise DatasetError(
            f"{path}: {missing_labels.sum()} missing label(s) in column {label_column!r}, "
            f"data rows {_rows(missing_labels)}"
        )
    # Natural order within a type (False < True, 0 < 1, "neg" < "pos"); types apart if a column mixes them.
    classes = sorted(labels.unique().tolist(), key=lambda v: (type(v).__name__, v))
    if len(classes) == 1:
        raise DatasetError(
            f"{path}: label column {label_column!r} has a single class {str(classes[0])!r}; a probe needs at least two"
        )
    if len(classes) > 2:
        raise DatasetError(
            f"{path}: label column {label_column!r} has {len(classes)} classes {[str(c) for c in classes[:6]]}; "
            "only binary probes are supported for now"
        )
    index = {value: i for i, value in enumerate(classes)}
    codes = {}
    for role, column in (("group", group_column), ("type", type_column)):
        if column is None:
            codes[role] = None
            continue
        values = frame[column]
        if values.isna().any():
            raise DatasetError(
                f"{path}: {values.isna().sum()} missing value(s) in {role} column {column!r}, "
                f"data rows {_rows(values.isna())}"
            )
        codes[role] = pd.factorize(values.astype(str), sort=True)[0].astype(np.int64)
    if codes["group"] is not None and len(np.unique(codes["group"])) < 2:
        raise DatasetError(f"{path}: group column {group_column!r} has a single group; folds need at least two")
    return LabelledTexts(
        path=path,
        texts=texts.astype(str).tolist(),
        labels=labels.map(index).to_numpy(dtype=np.int64),
        classes=[str(c) for c in classes],
        checksum=sha256_file(path),
        groups=codes["group"],
        types=codes["type"],
    )

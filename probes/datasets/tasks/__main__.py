"""``python -m probes.datasets.tasks``: rewrite the committed built-in concept datasets (or write them elsewhere)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from probes.datasets.tasks import write_builtin_datasets

DEFAULT_OUT = Path(__file__).resolve().parents[3] / "data" / "concepts"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m probes.datasets.tasks",
        description="Write data/concepts/*.csv from the built-in task generators.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed; the committed files use 0")
    args = parser.parse_args(argv)
    for path in write_builtin_datasets(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()

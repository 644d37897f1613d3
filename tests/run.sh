#!/usr/bin/env bash
# The whole test suite, fastest checks first, so a lint error or a broken unit fails in minutes:
# lint and format checks, the documentation build, then the fast lane (-m "not slow", under 2 minutes), then the slow tests.
#   PROBES_VENV=path   the environment install.sh made (default .venv); "active" uses the current one.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PROBES_VENV:-.venv}"
if [ "$venv" = active ]; then bin=""; else bin="$venv/bin/"; fi

"${bin}ruff" check .
"${bin}ruff" format --check .
"${bin}snakefmt" --check Snakefile workflow
"${bin}mkdocs" build --strict --quiet   # the documentation site: a broken link, reference or schema key fails
"${bin}python" -m pytest -m "not slow"
"${bin}python" -m pytest -m slow --durations=20   # the slowest tests, for the benchmarks page

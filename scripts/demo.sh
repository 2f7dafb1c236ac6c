#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the main job on the embedded default: fit a Direct Preference
# Head on bundled OpenBookQA with the bundled SmolLM2-135M-Instruct, then compare it with the
# model's own log-prob choice on 200 held-out test questions. Extra arguments go to `prefheads demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/prefheads demo "$@"

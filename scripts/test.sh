#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the unit test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c 'from importlib.metadata import version as v
print("[versions]", "  ".join(f"{p} {v(p)}" for p in ("torch", "transformers", "peft", "accelerate", "datasets")))'
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"

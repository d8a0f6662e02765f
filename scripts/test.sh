#!/usr/bin/env bash
# The test command: installs into .venv if needed, checks the layers and style, then runs the whole
# suite (real Ray, real vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh   # layers and style first: a broken contract fails in seconds, not after the suite
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest --durations=25 "$@"  # the slowest tests, to keep the suite under 30 min

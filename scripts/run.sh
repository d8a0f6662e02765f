#!/usr/bin/env bash
# The main job: installs into .venv if needed, then `phi4ray run` (default: the tiny preset).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
if [ $# -eq 0 ]; then set -- --preset tiny; fi
exec .venv/bin/phi4ray run "$@"

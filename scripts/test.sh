#!/usr/bin/env bash
# The test command: installs into .venv if needed, checks the layers and style, then runs pytest.
#
#   bash scripts/test.sh            # the default tier: every test not marked slow (Ray-free ones first)
#   bash scripts/test.sh -m slow    # the slow tier: several runs, node/replica loss, autoscaling, signals
#
# Extra arguments go to pytest. .ci/run runs both tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh   # layers and style first: a broken contract fails in seconds, not after the suite
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest --durations=30 "$@"

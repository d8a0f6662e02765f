#!/usr/bin/env bash
# Create or reuse .venv and install phi4ray with everything it needs on a CPU machine (CI, laptops):
# scripts/install.sh, the install the Dockerfiles run too, with the test tools (dev) on top.
# Idempotent: a second run with nothing changed is a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.phi4ray-installed
want=$(cat pyproject.toml scripts/setup.sh scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
bash scripts/install.sh cpu,dev
echo "$want" > "$stamp"

#!/usr/bin/env bash
# The layer and style rules: import-linter's contracts (pyproject.toml [tool.importlinter]) and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports
.venv/bin/ruff check phi4ray actors jobs tests benchmarks cluster

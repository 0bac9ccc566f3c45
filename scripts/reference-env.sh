#!/usr/bin/env bash
# Installs the PyTorch reference environment into .venv-ref (ignored), idempotently. Only the
# fixture generators and comparison scripts use it; building and testing engram never does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-ref/bin/python ] || ! .venv-ref/bin/python -c "import torch, transformers" 2>/dev/null; then
  python3 -m venv .venv-ref
  .venv-ref/bin/pip install -q "torch==2.15.0" "transformers==5.23.0" safetensors numpy
fi
.venv-ref/bin/python -c "import torch, transformers; print('reference env: torch', torch.__version__, '· transformers', transformers.__version__)"

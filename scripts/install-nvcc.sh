#!/usr/bin/env bash
# Installs the pinned CUDA compiler (nvcc 13.0.88 and its 13.0.* companions) from PyPI into the
# ignored .toolchain/cuda, idempotently, and prints its path. The shipped PTX must come from
# nvcc 13.0.x: a newer nvcc writes PTX that a CUDA 13.0 driver refuses to load.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.toolchain/cuda
want=13.0.88
nvcc_bin() { find "$dest" -path '*/bin/nvcc' -type f 2>/dev/null | head -n1; }
if [ -n "$(nvcc_bin)" ] && "$(nvcc_bin)" --version 2>/dev/null | grep -q "V$want"; then
  echo "$(nvcc_bin)"; exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
python3 -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$dest" \
  "nvidia-cuda-nvcc==$want" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
nvcc=$(nvcc_bin)
[ -n "$nvcc" ] || { echo "install-nvcc: no bin/nvcc under $dest after install" >&2; exit 1; }
chmod +x "$nvcc" "$(dirname "$nvcc")"/* 2>/dev/null || true
"$nvcc" --version | tail -n2 >&2
echo "$nvcc"

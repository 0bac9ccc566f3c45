#!/usr/bin/env bash
# The test command: everything a fresh machine needs, then the whole CPU suite.
# With the CUDA feature available it also compiles every kernel (the GPU tests skip, saying why,
# when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked "$@"

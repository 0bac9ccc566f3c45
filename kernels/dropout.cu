// Inverted dropout with the counter-based mask of src/ops/dropout.rs: element i of a call with
// seed s is kept iff uniform(s, i) ≥ p, uniform = top 24 bits of SplitMix64(s + i·φ) / 2²⁴. The GPU
// draws exactly the CPU's mask; backward recomputes it from the seed.
// Variants: dropout_fwd_v1, dropout_bwd_v1 — grid-stride, production.
#include "common.cuh"

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ bool keep(unsigned long long seed, long long i, float p) {
    const unsigned long long h = mix64(seed + (unsigned long long)i * 0x9e3779b97f4a7c15ULL);
    const float u = (float)(h >> 40) * (1.f / 16777216.f);
    return u >= p;
}

extern "C" __global__ void dropout_fwd_v1(float* y, const float* x, unsigned long long seed, float p, float inv, long long n) {
    GRID_STRIDE(i, n) y[i] = keep(seed, i, p) ? x[i] * inv : 0.f;
}

extern "C" __global__ void dropout_bwd_v1(float* dx, const float* dy, unsigned long long seed, float p, float inv, long long n) {
    GRID_STRIDE(i, n) dx[i] += keep(seed, i, p) ? dy[i] * inv : 0.f;
}

// Shared device helpers for engram's kernels: grid-stride loops and warp/block reductions.
// Kernels take f32 data and i64 ids; sizes are passed as long long (element counts) or int
// (dimensions, all < 2^31).
#pragma once
#include <stdint.h>
#include <math.h>

// The counter-based dropout mask of src/ops/dropout.rs: element i of a call with seed s is kept
// iff uniform(s, i) ≥ p, uniform = top 24 bits of SplitMix64(s + i·φ) / 2²⁴ — the CPU's mask exactly.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ bool dropout_keep(unsigned long long seed, long long i, float p) {
    const unsigned long long h = mix64(seed + (unsigned long long)i * 0x9e3779b97f4a7c15ULL);
    const float u = (float)(h >> 40) * (1.f / 16777216.f);
    return u >= p;
}

// Dynamically sized shared memory (the launch's shared_mem_bytes), as an array `name` of `type`.
// A macro so that the CPU emulator (kernels/emu/cuda_emu.h) can supply the block's buffer.
#ifdef ENGRAM_EMU
#define DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu::dynamic_shared())
#else
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions; blockDim.x must be a multiple of 32 (≤ 1024). Every thread gets the
// result. Safe to call repeatedly in one kernel (barriers on both sides of the shared slot).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float s[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) s[w] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? s[threadIdx.x] : 0.f;
    if (w == 0) v = warp_sum(v);
    if (threadIdx.x == 0) s[0] = v;
    __syncthreads();
    const float r = s[0];
    __syncthreads();
    return r;
}
__device__ __forceinline__ float block_max(float v) {
    __shared__ float s[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) s[w] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? s[threadIdx.x] : -INFINITY;
    if (w == 0) v = warp_max(v);
    if (threadIdx.x == 0) s[0] = v;
    __syncthreads();
    const float r = s[0];
    __syncthreads();
    return r;
}
__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double s[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) s[w] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? s[threadIdx.x] : 0.0;
    if (w == 0) v = warp_sum_d(v);
    if (threadIdx.x == 0) s[0] = v;
    __syncthreads();
    const double r = s[0];
    __syncthreads();
    return r;
}

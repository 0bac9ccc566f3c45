// Row softmax over the last dimension and its backward dx += y·(dy − Σ dy·y).
// Variants: softmax_fwd_v1, softmax_bwd_v1 — one block per row, production. Timings: benches/RESULTS.md.
#include "common.cuh"

extern "C" __global__ void softmax_fwd_v1(float* y, const float* x, long long rows, int c) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * c;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < c; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m);
    if (m == -INFINITY) {  // a fully masked row: zeros, as the CPU reference
        for (int i = threadIdx.x; i < c; i += blockDim.x) y[r * c + i] = 0.f;
        return;
    }
    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += expf(xr[i] - m);
    const float inv = 1.f / block_sum(s);
    for (int i = threadIdx.x; i < c; i += blockDim.x) y[r * c + i] = expf(xr[i] - m) * inv;
}

extern "C" __global__ void softmax_bwd_v1(float* dx, const float* dy, const float* y, long long rows, int c) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float *dyr = dy + r * c, *yr = y + r * c;
    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += dyr[i] * yr[i];
    s = block_sum(s);
    for (int i = threadIdx.x; i < c; i += blockDim.x) dx[r * c + i] += yr[i] * (dyr[i] - s);
}

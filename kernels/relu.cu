// ReLU forward and backward (dx += dy where x > 0).
// Variants: relu_{fwd,bwd}_v1 — grid-stride, production.
#include "common.cuh"

extern "C" __global__ void relu_fwd_v1(float* y, const float* x, long long n) {
    GRID_STRIDE(i, n) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

extern "C" __global__ void relu_bwd_v1(float* dx, const float* dy, const float* x, long long n) {
    GRID_STRIDE(i, n) if (x[i] > 0.f) dx[i] += dy[i];
}

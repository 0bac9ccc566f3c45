// tanh forward and backward (dx += dy · (1 − tanh²x)).
// Variants: tanh_{fwd,bwd}_v1 — grid-stride, production.
#include "common.cuh"

extern "C" __global__ void tanh_fwd_v1(float* y, const float* x, long long n) {
    GRID_STRIDE(i, n) y[i] = tanhf(x[i]);
}

extern "C" __global__ void tanh_bwd_v1(float* dx, const float* dy, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const float t = tanhf(x[i]);
        dx[i] += dy[i] * (1.f - t * t);
    }
}

// Mean elementwise losses against float targets (src/ops/elementwise_loss.rs): BCE with logits
// (multi-label heads) and MSE (regression heads). The forward is one block with an f64 sum (the
// loss inputs are B × labels, small); the backward is grid-stride, dx += dloss/n · f'(x, y).
// Variants:
//   bce_with_logits_fwd_v1 / mse_loss_fwd_v1: one block of 1024, f64 block sum — production
//   bce_with_logits_bwd_v1 / mse_loss_bwd_v1: grid-stride — production
//   bce_with_logits_pw_fwd_v1 / _bwd_v1: BCE with a positive weight per label (pos_weight, the
//     last dimension, c labels): (1 − y)·x + (1 + (p − 1)·y)·softplus(−x) — production
// Not timed: a classification head's loss is B·L elements (≤ 10⁴), far below a launch's cost.
#include "common.cuh"

// max(x, 0) − x·y + log(1 + e^{−|x|}): never overflows, exact for large |x|.
__device__ __forceinline__ float bce_term(float x, float y) { return fmaxf(x, 0.f) - x * y + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float bce_grad(float x, float y) { return 1.f / (1.f + expf(-x)) - y; }
__device__ __forceinline__ float mse_term(float x, float y) { return (x - y) * (x - y); }
__device__ __forceinline__ float mse_grad(float x, float y) { return 2.f * (x - y); }

template <bool BCE>
__device__ __forceinline__ void mean_loss_fwd(float* loss, const float* x, const float* y, long long n) {
    double s = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += BCE ? bce_term(x[i], y[i]) : mse_term(x[i], y[i]);
    s = block_sum_d(s);
    if (threadIdx.x == 0) loss[0] = (float)(s / (double)n);
}

template <bool BCE>
__device__ __forceinline__ void mean_loss_bwd(float* dx, const float* dloss, const float* x, const float* y, long long n) {
    const float g = dloss[0] / (float)n;
    GRID_STRIDE(i, n) dx[i] += g * (BCE ? bce_grad(x[i], y[i]) : mse_grad(x[i], y[i]));
}

extern "C" __global__ void bce_with_logits_fwd_v1(float* loss, const float* x, const float* y, long long n) {
    mean_loss_fwd<true>(loss, x, y, n);
}
extern "C" __global__ void bce_with_logits_bwd_v1(float* dx, const float* dloss, const float* x, const float* y, long long n) {
    mean_loss_bwd<true>(dx, dloss, x, y, n);
}
extern "C" __global__ void mse_loss_fwd_v1(float* loss, const float* x, const float* y, long long n) {
    mean_loss_fwd<false>(loss, x, y, n);
}
extern "C" __global__ void mse_loss_bwd_v1(float* dx, const float* dloss, const float* x, const float* y, long long n) {
    mean_loss_bwd<false>(dx, dloss, x, y, n);
}

// PyTorch's pos_weight form; softplus(−x) = max(−x, 0) + log(1 + e^{−|x|}).
__device__ __forceinline__ float bce_pw_term(float x, float y, float p) {
    const float lw = 1.f + (p - 1.f) * y;
    return (1.f - y) * x + lw * (fmaxf(-x, 0.f) + log1pf(expf(-fabsf(x))));
}
__device__ __forceinline__ float bce_pw_grad(float x, float y, float p) {
    const float lw = 1.f + (p - 1.f) * y;
    return (1.f - y) + lw * (1.f / (1.f + expf(-x)) - 1.f);
}

extern "C" __global__ void bce_with_logits_pw_fwd_v1(float* loss, const float* x, const float* y, const float* pw, long long n, int c) {
    double s = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += bce_pw_term(x[i], y[i], pw[i % c]);
    s = block_sum_d(s);
    if (threadIdx.x == 0) loss[0] = (float)(s / (double)n);
}
extern "C" __global__ void bce_with_logits_pw_bwd_v1(float* dx, const float* dloss, const float* x, const float* y, const float* pw,
                                                     long long n, int c) {
    const float g = dloss[0] / (float)n;
    GRID_STRIDE(i, n) dx[i] += g * bce_pw_grad(x[i], y[i], pw[i % c]);
}

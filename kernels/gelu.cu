// GELU, exact (erf) and tanh-approximated, forward and backward (dx += dy · f'(x)).
// Variants: gelu_{fwd,bwd}_v1, gelu_tanh_{fwd,bwd}_v1 — grid-stride, production. Timings: benches/RESULTS.md.
#include "common.cuh"

#define SQRT_1_2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f
#define SQRT_2_OVER_PI 0.79788456080286536f
#define GELU_C 0.044715f

extern "C" __global__ void gelu_fwd_v1(float* y, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.f + erff(v * SQRT_1_2));
    }
}

// d/dx x·Φ(x) = Φ(x) + x·φ(x)
extern "C" __global__ void gelu_bwd_v1(float* dx, const float* dy, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.f + erff(v * SQRT_1_2));
        const float pdf = expf(-0.5f * v * v) * INV_SQRT_2PI;
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}

extern "C" __global__ void gelu_tanh_fwd_v1(float* y, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const float u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
        y[i] = 0.5f * v * (1.f + tanhf(u));
    }
}

// d/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)(1 + 3c·x²), t = tanh(√(2/π)(x + c·x³))
extern "C" __global__ void gelu_tanh_bwd_v1(float* dx, const float* dy, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const float t = tanhf(SQRT_2_OVER_PI * (v + GELU_C * v * v * v));
        const float d = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * SQRT_2_OVER_PI * (1.f + 3.f * GELU_C * v * v);
        dx[i] += dy[i] * d;
    }
}

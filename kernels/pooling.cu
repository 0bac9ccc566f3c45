// Masked mean pooling over the sequence: y_b = Σ_t m_bt·x_bt / max(Σ_t m_bt, 1e-9).
// Variants: mean_pool_fwd_v1, mean_pool_bwd_v1 — grid-stride over (b, c) / (b, t, c), production.
#include "common.cuh"

__device__ __forceinline__ float mask_count(const long long* mask, int b, int t) {
    long long s = 0;
    for (int i = 0; i < t; ++i) s += mask[(long long)b * t + i];
    return fmaxf((float)s, 1e-9f);
}

extern "C" __global__ void mean_pool_fwd_v1(float* y, const float* x, const long long* mask, int B, int T, int C) {
    GRID_STRIDE(i, (long long)B * C) {
        const int b = (int)(i / C), c = (int)(i % C);
        float acc = 0.f;
        for (int t = 0; t < T; ++t) {
            const long long m = mask[(long long)b * T + t];
            if (m != 0) acc += (float)m * x[((long long)b * T + t) * C + c];
        }
        y[i] = acc * (1.f / mask_count(mask, b, T));
    }
}

extern "C" __global__ void mean_pool_bwd_v1(float* dx, const float* dy, const long long* mask, int B, int T, int C) {
    GRID_STRIDE(i, (long long)B * T * C) {
        const int c = (int)(i % C);
        const long long bt = i / C;
        const int b = (int)(bt / T);
        const long long m = mask[bt];
        if (m != 0) dx[i] += (float)m * dy[(long long)b * C + c] * (1.f / mask_count(mask, b, T));
    }
}

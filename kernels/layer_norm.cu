// Layer norm over the last dimension: forward (saves mean and 1/σ per row) and backward.
// Variants:
//   layer_norm_fwd_v1: one block per row, two-pass mean/variance from global memory — production
//   layer_norm_bwd_dx_v1: one block per row, dx += r·(g − mean(g) − n·mean(g·n)), g = dy·w — production
//   layer_norm_bwd_dwdb_v1: one thread per column walking rows (deterministic, no atomics) — production
// Timings: benches/RESULTS.md.
#include "common.cuh"

extern "C" __global__ void layer_norm_fwd_v1(float* y, float* mean, float* rstd, const float* x, const float* w,
                                             const float* b, long long rows, int c, float eps) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * c;
    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += xr[i];
    const float mu = block_sum(s) / c;
    float q = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float d = xr[i] - mu;
        q += d * d;
    }
    const float var = block_sum(q) / c;
    const float rs = 1.f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < c; i += blockDim.x) y[r * c + i] = (xr[i] - mu) * rs * w[i] + b[i];
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

extern "C" __global__ void layer_norm_bwd_dx_v1(float* dx, const float* dy, const float* x, const float* mean,
                                                const float* rstd, const float* w, long long rows, int c) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float mu = mean[r], rs = rstd[r];
    const float *xr = x + r * c, *dyr = dy + r * c;
    float sg = 0.f, sgn = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float g = dyr[i] * w[i];
        sg += g;
        sgn += g * (xr[i] - mu) * rs;
    }
    const float mg = block_sum(sg) / c;
    const float mgn = block_sum(sgn) / c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float n = (xr[i] - mu) * rs;
        dx[r * c + i] += rs * (dyr[i] * w[i] - mg - n * mgn);
    }
}

extern "C" __global__ void layer_norm_bwd_dwdb_v1(float* dw, float* db, const float* dy, const float* x,
                                                  const float* mean, const float* rstd, long long rows, int c) {
    GRID_STRIDE(j, c) {
        float aw = 0.f, ab = 0.f;
        for (long long r = 0; r < rows; ++r) {
            const float g = dy[r * c + j];
            aw += g * (x[r * c + j] - mean[r]) * rstd[r];
            ab += g;
        }
        dw[j] += aw;
        db[j] += ab;
    }
}

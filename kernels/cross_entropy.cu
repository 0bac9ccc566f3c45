// Softmax cross-entropy with integer targets, ignore_index = -100 (mean over non-ignored rows;
// 0 with no gradient when every row is ignored) and label smoothing eps (row loss
// (1 − eps)·(lse − x_t) + eps·(lse − mean x); eps = 0: plain). Targets are validated on the host.
// Variants:
//   cross_entropy_fwd_v1: one block per row, logsumexp + per-row loss — production
//   cross_entropy_reduce_v1: one block, f64 sum of row losses and the non-ignored count — production
//   cross_entropy_bwd_v1: grid-stride over logits, dx += dloss/count · (softmax − onehot) — production
// With a weight w per class (F.cross_entropy(weight=w): row loss (1 − eps)·w_t·(lse − x_t) +
// (eps/v)·Σ_j w_j·(lse − x_j), divided by Σ w_t over non-ignored rows):
//   cross_entropy_weighted_fwd_v1: one block per row, logsumexp + weighted row loss + w_t — production
//   cross_entropy_weighted_reduce_v1: one block, f64 sums of row losses and of w_t — production
//   cross_entropy_weighted_bwd_v1: grid-stride, dx += dloss/Σw_t · (a·softmax − (1 − eps)·w_t·onehot
//     − (eps/v)·w), a = (1 − eps)·w_t + (eps/v)·Σ_j w_j — production
#include "common.cuh"

#define IGNORE_INDEX (-100LL)

// logsumexp of one row of v logits, by the whole block; every thread gets it.
__device__ __forceinline__ float row_logsumexp(const float* xr, int v) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += expf(xr[i] - m);
    return m + logf(block_sum(s));
}

extern "C" __global__ void cross_entropy_fwd_v1(float* row_loss, float* lse, const float* logits, const long long* targets,
                                                long long rows, int v, float eps) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = logits + r * v;
    const float l = row_logsumexp(xr, v);
    float sum = 0.f;
    if (eps != 0.f) {
        for (int i = threadIdx.x; i < v; i += blockDim.x) sum += xr[i];
        sum = block_sum(sum);
    }
    if (threadIdx.x == 0) {
        lse[r] = l;
        const long long t = targets[r];
        row_loss[r] = (t == IGNORE_INDEX) ? 0.f : (1.f - eps) * (l - xr[t]) + eps * (l - sum / (float)v);
    }
}

// loss[0] = Σ row_loss / count (0 when count = 0); count[0] = number of non-ignored rows.
extern "C" __global__ void cross_entropy_reduce_v1(float* loss, float* count, const float* row_loss, const long long* targets,
                                                   long long rows) {
    double s = 0.0, c = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        s += row_loss[r];
        c += (targets[r] != IGNORE_INDEX) ? 1.0 : 0.0;
    }
    s = block_sum_d(s);
    c = block_sum_d(c);
    if (threadIdx.x == 0) {
        loss[0] = c > 0 ? (float)(s / c) : 0.f;
        count[0] = (float)c;
    }
}

extern "C" __global__ void cross_entropy_bwd_v1(float* dx, const float* dloss, const float* count, const float* lse,
                                                const float* logits, const long long* targets, long long rows, int v, float eps) {
    const float cnt = count[0];
    if (cnt == 0.f) return;
    const float g = dloss[0] / cnt;
    GRID_STRIDE(i, rows * v) {
        const long long r = i / v;
        const long long t = targets[r];
        if (t == IGNORE_INDEX) continue;
        const int j = (int)(i % v);
        const float p = expf(logits[i] - lse[r]);
        dx[i] += g * (p - (j == t ? 1.f - eps : 0.f) - eps / (float)v);
    }
}

extern "C" __global__ void cross_entropy_weighted_fwd_v1(float* row_loss, float* row_w, float* lse, const float* logits,
                                                         const long long* targets, const float* weight, long long rows, int v,
                                                         float eps) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = logits + r * v;
    const float l = row_logsumexp(xr, v);
    float spread = 0.f;
    if (eps != 0.f) {
        for (int i = threadIdx.x; i < v; i += blockDim.x) spread += weight[i] * (l - xr[i]);
        spread = block_sum(spread);
    }
    if (threadIdx.x == 0) {
        lse[r] = l;
        const long long t = targets[r];
        const float wt = (t == IGNORE_INDEX) ? 0.f : weight[t];
        row_w[r] = wt;
        row_loss[r] = (t == IGNORE_INDEX) ? 0.f : (1.f - eps) * wt * (l - xr[t]) + eps / (float)v * spread;
    }
}

// loss[0] = Σ row_loss / Σ row_w (0 when that is 0); norm[0] = Σ row_w.
extern "C" __global__ void cross_entropy_weighted_reduce_v1(float* loss, float* norm, const float* row_loss, const float* row_w,
                                                            long long rows) {
    double s = 0.0, z = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        s += row_loss[r];
        z += row_w[r];
    }
    s = block_sum_d(s);
    z = block_sum_d(z);
    if (threadIdx.x == 0) {
        loss[0] = z > 0 ? (float)(s / z) : 0.f;
        norm[0] = (float)z;
    }
}

extern "C" __global__ void cross_entropy_weighted_bwd_v1(float* dx, const float* dloss, const float* norm, const float* lse,
                                                         const float* logits, const long long* targets, const float* weight,
                                                         long long rows, int v, float eps, float wsum) {
    const float z = norm[0];
    if (z == 0.f) return;
    const float g = dloss[0] / z;
    GRID_STRIDE(i, rows * v) {
        const long long r = i / v;
        const long long t = targets[r];
        if (t == IGNORE_INDEX) continue;
        const int j = (int)(i % v);
        const float wt = weight[t];
        const float a = (1.f - eps) * wt + eps / (float)v * wsum;
        const float p = expf(logits[i] - lse[r]);
        dx[i] += g * (a * p - (j == t ? (1.f - eps) * wt : 0.f) - eps / (float)v * weight[j]);
    }
}

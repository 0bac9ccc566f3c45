// Fused scaled-dot-product self-attention with a key padding mask and dropout of the probabilities, one op:
//   S = scale·Q·Kᵀ (masked keys → −∞), P = softmax(S) (a fully masked row → P = 0, O = 0),
//   D = P ⊙ keep / (1 − p), O = D·V. keep is the counter-based mask of dropout (dropout_keep, index
//   ((b·NH + h)·Tq + i)·Tk + j); p = 0 keeps everything (inv = 1), so inference pays one branch.
// Shapes: q (B, NH, Tq, HS), k, v (B, NH, Tk, HS), mask (B, Tk) i64 (1 attend, 0 padding) or null,
// probs (B, NH, Tq, Tk) saved for the backward (as the CPU reference does).
// Backward with dP = (dO·Vᵀ) ⊙ keep / (1 − p), dS = P ⊙ (dP − rowsum(P ⊙ dP)):
//   dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Dᵀ·dO.
// Variants:
//   attention_fwd_v1: one block per (query row, batch·head), scores in shared memory
//   attention_bwd_q_v1: one block per query row: dS (to scratch) and dQ
//   attention_bwd_kv_v1: one block per key row: dK, dV from the dS scratch
//       (v1: the first kernels, ENGRAM_ATTENTION=v1, and the ones for heads wider than 64)
//   attention_{fwd,bwd_d,bwd_q,bwd_kv}_v2: flash-style (online softmax, no Tq×Tk matrix; saves
//       the row log-sum-exp), HS ≤ 64 — verified on the CPU emulator (tests/kernels_emulated.rs)
//       against the CPU op with dropout and padding, and on an H100 (2026-11-24: tests/cuda.rs,
//       memcheck clean, no racecheck hazard in the op tests, forward 4.5–5.0× and forward+backward 2.7–3.0× v1) — production
#include "common.cuh"

extern "C" __global__ void attention_fwd_v1(float* out, float* probs, const float* q, const float* k, const float* v,
                                            const long long* mask, int B, int NH, int Tq, int Tk, int HS, float scale,
                                            unsigned long long seed, float p, float inv) {
    DYNAMIC_SHARED(float4, sm4);  // float4: 16-byte aligned, so vectorised shared loads stay in bounds
    float* sm = reinterpret_cast<float*>(sm4);
    float* s = sm;                     // Tk scores, then probabilities
    float* qs = sm + ((Tk + 3) & ~3);  // HS: the query row (16-byte aligned)
    const int i = blockIdx.x;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / NH);
    const float* qr = q + (bh * Tq + i) * HS;
    const float* kh = k + bh * Tk * HS;
    const float* vh = v + bh * Tk * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        float x = -INFINITY;
        if (mask == nullptr || mask[(long long)b * Tk + j] != 0) {
            float dot = 0.f;
            for (int d = 0; d < HS; ++d) dot += qs[d] * kh[(long long)j * HS + d];
            x = dot * scale;
        }
        s[j] = x;
        m = fmaxf(m, x);
    }
    m = block_max(m);
    float* pr = probs + (bh * Tq + i) * Tk;
    if (m == -INFINITY) {
        for (int j = threadIdx.x; j < Tk; j += blockDim.x) s[j] = pr[j] = 0.f;
    } else {
        float sum = 0.f;
        for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
            const float e = expf(s[j] - m);
            s[j] = e;
            sum += e;
        }
        const float rs = 1.f / block_sum(sum);
        for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
            const float pj = s[j] * rs;
            pr[j] = pj;
            s[j] = (p > 0.f) ? (dropout_keep(seed, (bh * Tq + i) * Tk + j, p) ? pj * inv : 0.f) : pj;
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < Tk; ++j) acc += s[j] * vh[(long long)j * HS + d];
        out[(bh * Tq + i) * HS + d] = acc;
    }
}

extern "C" __global__ void attention_bwd_q_v1(float* dq, float* ds, const float* dout, const float* probs, const float* k,
                                              const float* v, int B, int NH, int Tq, int Tk, int HS, float scale,
                                              unsigned long long seed, float p, float inv) {
    DYNAMIC_SHARED(float4, sm4);
    float* sm = reinterpret_cast<float*>(sm4);
    float* s = sm;                      // Tk: dP, then dS
    float* dos = sm + ((Tk + 3) & ~3);  // HS: the dO row (16-byte aligned)
    const int i = blockIdx.x;
    const long long bh = blockIdx.y;
    const float* kh = k + bh * Tk * HS;
    const float* vh = v + bh * Tk * HS;
    const float* pr = probs + (bh * Tq + i) * Tk;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) dos[d] = dout[(bh * Tq + i) * HS + d];
    __syncthreads();
    float t = 0.f;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        float dp = 0.f;
        for (int d = 0; d < HS; ++d) dp += dos[d] * vh[(long long)j * HS + d];
        if (p > 0.f) dp = dropout_keep(seed, (bh * Tq + i) * Tk + j, p) ? dp * inv : 0.f;
        s[j] = dp;
        t += pr[j] * dp;
    }
    t = block_sum(t);
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        const float g = pr[j] * (s[j] - t);
        s[j] = g;
        ds[(bh * Tq + i) * Tk + j] = g;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < Tk; ++j) acc += s[j] * kh[(long long)j * HS + d];
        dq[(bh * Tq + i) * HS + d] += scale * acc;
    }
}

extern "C" __global__ void attention_bwd_kv_v1(float* dk, float* dv, const float* ds, const float* probs, const float* q,
                                               const float* dout, int B, int NH, int Tq, int Tk, int HS, float scale,
                                               unsigned long long seed, float p, float inv) {
    const int j = blockIdx.x;
    const long long bh = blockIdx.y;
    const float* qh = q + bh * Tq * HS;
    const float* doh = dout + bh * Tq * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float ak = 0.f, av = 0.f;
        for (int i = 0; i < Tq; ++i) {
            const long long ij = (bh * Tq + i) * Tk + j;
            ak += ds[ij] * qh[(long long)i * HS + d];
            const float dij = (p > 0.f) ? (dropout_keep(seed, ij, p) ? probs[ij] * inv : 0.f) : probs[ij];
            av += dij * doh[(long long)i * HS + d];
        }
        dk[(bh * Tk + j) * HS + d] += scale * ak;
        dv[(bh * Tk + j) * HS + d] += av;
    }
}

// ---- v2: flash-style (online softmax; no Tq×Tk matrix in memory) --------------------------------
// Forward: one block per (32 query rows, b·h), 128 threads = 32 rows × 4 lanes. Key tiles of 32
// keys go through shared memory; lane l of a row scores keys l, l+4, …, keeps the row's running
// max m and normaliser l (exchanged among the row's 4 lanes by shuffles) and owns a contiguous
// chunk of CH output dims. Saves the row log-sum-exp L = m + log l (+∞ for a fully masked row)
// instead of P. Dropout multiplies the numerator only: O = Σ_j (e_j/l)·keep_j/(1−p)·v_j, as in v1.
// Backward: D_i = dO_i·O_i (= Σ_j P_ij dP_ij, also with dropout), then one kernel per query tile
// for dQ and one per key tile for dK, dV, each recomputing P = exp(scale·q·k − L) tile by tile:
// no atomics, deterministic. HS ≤ 64 (every BERT size); larger heads use v1.
// Shared rows are HS rounded up to 4, zero-padded, plus 4 floats (stride ≡ 4 banks: the four keys
// a quarter-warp reads as float4 fall in different banks); all shared reads are float4, and the
// 8 rows of a warp read the same key/value addresses (broadcast).
#define AT2_R 32      // query rows (forward, dQ) or keys (dK/dV) per block
#define AT2_T 32      // keys (forward, dQ) or query rows (dK/dV) per tile
#define AT2_MAXD 16   // dims per lane: HS ≤ 4·16
__device__ __forceinline__ float at2_sum4(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float at2_max4(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float at2_dot4(float acc, float4 x, float4 y) {
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
    acc = fmaf(x.z, y.z, acc);
    return fmaf(x.w, y.w, acc);
}
// Row stride (floats) and per-lane chunk for head size HS.
__device__ __forceinline__ int at2_hs4(int HS) { return (HS + 3) & ~3; }
__device__ __forceinline__ int at2_stride(int HS) { return at2_hs4(HS) + 4; }
__device__ __forceinline__ int at2_chunk(int HS) { return 4 * ((at2_hs4(HS) + 15) / 16); }
// Rows [r0, r0 + n) of a (rows, HS) matrix into shared rows of stride HP, zero-padded (rows past
// `limit` are zero too).
__device__ __forceinline__ void at2_load(float* dst, const float* src, int r0, int n, int limit, int HS, int HP) {
    for (int e = threadIdx.x; e < n * HP; e += blockDim.x) {
        const int rr = e / HP, d = e % HP, row = r0 + rr;
        dst[e] = (d < HS && row < limit) ? src[(long long)row * HS + d] : 0.f;
    }
}
// acc[0..CH) += w · row[c0 .. c0 + CH) for the lane's chunk, in float4 steps inside the row.
__device__ __forceinline__ void at2_axpy(float* acc, float w, const float* row, int c0, int HS4) {
#pragma unroll
    for (int t = 0; t < AT2_MAXD / 4; ++t) {
        const int d = c0 + 4 * t;
        if (4 * t < at2_chunk(HS4) && d < HS4) {
            const float4 x = *reinterpret_cast<const float4*>(row + d);
            acc[4 * t] = fmaf(w, x.x, acc[4 * t]);
            acc[4 * t + 1] = fmaf(w, x.y, acc[4 * t + 1]);
            acc[4 * t + 2] = fmaf(w, x.z, acc[4 * t + 2]);
            acc[4 * t + 3] = fmaf(w, x.w, acc[4 * t + 3]);
        }
    }
}

// Ms[jj] = 1 when key j0 + jj exists and is not padding, else 0.
__device__ __forceinline__ void at2_key_mask(float* Ms, const long long* mask, int b, int j0, int Tk) {
    for (int jj = threadIdx.x; jj < AT2_T; jj += blockDim.x) {
        const int j = j0 + jj;
        Ms[jj] = (j < Tk && (mask == nullptr || mask[(long long)b * Tk + j] != 0)) ? 1.f : 0.f;
    }
}
// The backward's two dots per (own row, tile row lane + 4u): dot[u] = a·X[row], dpv[u] = c·Y[row]
// (own q and dO against the tile's k and v, or own k and v against the tile's q and dO).
__device__ __forceinline__ void at2_dots(float* dot, float* dpv, const float4* a, const float4* c, const float* X, const float* Y,
                                         int lane, int HP, int HS4) {
#pragma unroll
    for (int u = 0; u < AT2_T / 4; ++u) dot[u] = dpv[u] = 0.f;
    for (int t = 0; t < HS4 / 4; ++t) {
        const float4 x = a[t], y = c[t];
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) {
            const int row = lane + 4 * u;
            dot[u] = at2_dot4(dot[u], x, reinterpret_cast<const float4*>(X + row * HP)[t]);
            dpv[u] = at2_dot4(dpv[u], y, reinterpret_cast<const float4*>(Y + row * HP)[t]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_fwd_v2(float* out, float* lse, const float* q, const float* k,
                                                                  const float* v, const long long* mask, int B, int NH, int Tq,
                                                                  int Tk, int HS, float scale, unsigned long long seed, float p,
                                                                  float inv) {
    DYNAMIC_SHARED(float4, sm4);
    float* sm = reinterpret_cast<float*>(sm4);
    const int HS4 = at2_hs4(HS), HP = at2_stride(HS), CH = at2_chunk(HS);
    float* Qs = sm;                        // [AT2_R][HP]
    float* Ks = Qs + AT2_R * HP;           // [AT2_T][HP]
    float* Vs = Ks + AT2_T * HP;           // [AT2_T][HP]
    float* Ps = Vs + AT2_T * HP;           // [AT2_R][AT2_T + 4]
    float* Ms = Ps + AT2_R * (AT2_T + 4);  // [AT2_T]: 1 attend, 0 padding or past Tk
    const int tid = threadIdx.x, r = tid >> 2, lane = tid & 3, c0 = lane * CH;
    const int i0 = blockIdx.x * AT2_R, i = i0 + r;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / NH);
    at2_load(Qs, q + bh * Tq * HS, i0, AT2_R, Tq, HS, HP);
    float m = -INFINITY, l = 0.f, o[AT2_MAXD];
#pragma unroll
    for (int t = 0; t < AT2_MAXD; ++t) o[t] = 0.f;
    const float4* q4 = reinterpret_cast<const float4*>(Qs + r * HP);
    for (int j0 = 0; j0 < Tk; j0 += AT2_T) {
        __syncthreads();  // the previous tile is consumed (and Qs is written, first time)
        at2_load(Ks, k + bh * Tk * HS, j0, AT2_T, Tk, HS, HP);
        at2_load(Vs, v + bh * Tk * HS, j0, AT2_T, Tk, HS, HP);
        at2_key_mask(Ms, mask, b, j0, Tk);
        __syncthreads();
        float s[AT2_T / 4];
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) s[u] = 0.f;
        for (int t = 0; t < HS4 / 4; ++t) {
            const float4 x = q4[t];
#pragma unroll
            for (int u = 0; u < AT2_T / 4; ++u) s[u] = at2_dot4(s[u], x, reinterpret_cast<const float4*>(Ks + (lane + 4 * u) * HP)[t]);
        }
        float tmax = -INFINITY;
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) {
            s[u] = Ms[lane + 4 * u] != 0.f ? s[u] * scale : -INFINITY;
            tmax = fmaxf(tmax, s[u]);
        }
        tmax = at2_max4(tmax);
        const float mn = fmaxf(m, tmax);
        const float corr = (mn == -INFINITY) ? 1.f : expf(m - mn);  // m = −∞ → 0: nothing to rescale
        float psum = 0.f;
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) {
            const int jj = lane + 4 * u;
            const float e = (s[u] == -INFINITY) ? 0.f : expf(s[u] - mn);
            psum += e;
            float pd = e;
            if (p > 0.f && e != 0.f) pd = dropout_keep(seed, ((bh * Tq + i) * Tk) + j0 + jj, p) ? e * inv : 0.f;
            Ps[r * (AT2_T + 4) + jj] = pd;
        }
        l = l * corr + at2_sum4(psum);
        m = mn;
        __syncwarp();  // the row's 4 lanes (one warp) have written their Ps entries
#pragma unroll
        for (int t = 0; t < AT2_MAXD; ++t) o[t] *= corr;
        for (int jj = 0; jj < AT2_T; ++jj) at2_axpy(o, Ps[r * (AT2_T + 4) + jj], Vs + jj * HP, c0, HS4);
    }
    if (i < Tq) {
        const float rl = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
        for (int t = 0; t < AT2_MAXD; ++t) {
            const int d = c0 + t;
            if (t < CH && d < HS) out[(bh * Tq + i) * HS + d] = o[t] * rl;
        }
        if (lane == 0) lse[bh * Tq + i] = l > 0.f ? m + logf(l) : INFINITY;
    }
}

// D_i = dO_i · O_i, one thread per row.
extern "C" __global__ void attention_bwd_d_v2(float* dd, const float* dout, const float* o, long long rows, int HS) {
    GRID_STRIDE(i, rows) {
        float acc = 0.f;
        for (int d = 0; d < HS; ++d) acc = fmaf(dout[i * HS + d], o[i * HS + d], acc);
        dd[i] = acc;
    }
}

// dQ: one block per (32 query rows, b·h); the forward's layout, key tiles recomputing P, dP, dS.
extern "C" __global__ void __launch_bounds__(128) attention_bwd_q_v2(float* dq, const float* dout, const float* lse, const float* dd,
                                                                    const float* q, const float* k, const float* v,
                                                                    const long long* mask, int B, int NH, int Tq, int Tk, int HS,
                                                                    float scale, unsigned long long seed, float p, float inv) {
    DYNAMIC_SHARED(float4, sm4);
    float* sm = reinterpret_cast<float*>(sm4);
    const int HS4 = at2_hs4(HS), HP = at2_stride(HS), CH = at2_chunk(HS);
    float* Qs = sm;                        // [AT2_R][HP]
    float* Os = Qs + AT2_R * HP;           // [AT2_R][HP]: dO rows
    float* Ks = Os + AT2_R * HP;           // [AT2_T][HP]
    float* Vs = Ks + AT2_T * HP;           // [AT2_T][HP]
    float* Ss = Vs + AT2_T * HP;           // [AT2_R][AT2_T + 4]: dS
    float* Ms = Ss + AT2_R * (AT2_T + 4);  // [AT2_T]
    const int tid = threadIdx.x, r = tid >> 2, lane = tid & 3, c0 = lane * CH;
    const int i0 = blockIdx.x * AT2_R, i = i0 + r;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / NH);
    at2_load(Qs, q + bh * Tq * HS, i0, AT2_R, Tq, HS, HP);
    at2_load(Os, dout + bh * Tq * HS, i0, AT2_R, Tq, HS, HP);
    const float L = i < Tq ? lse[bh * Tq + i] : INFINITY, Di = i < Tq ? dd[bh * Tq + i] : 0.f;
    const float4* q4 = reinterpret_cast<const float4*>(Qs + r * HP);
    const float4* o4 = reinterpret_cast<const float4*>(Os + r * HP);
    float g[AT2_MAXD];
#pragma unroll
    for (int t = 0; t < AT2_MAXD; ++t) g[t] = 0.f;
    for (int j0 = 0; j0 < Tk; j0 += AT2_T) {
        __syncthreads();
        at2_load(Ks, k + bh * Tk * HS, j0, AT2_T, Tk, HS, HP);
        at2_load(Vs, v + bh * Tk * HS, j0, AT2_T, Tk, HS, HP);
        at2_key_mask(Ms, mask, b, j0, Tk);
        __syncthreads();
        float dot[AT2_T / 4], dpv[AT2_T / 4];
        at2_dots(dot, dpv, q4, o4, Ks, Vs, lane, HP, HS4);
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) {
            const int jj = lane + 4 * u;
            float ds = 0.f;
            if (Ms[jj] != 0.f && L != INFINITY) {
                const float pij = expf(dot[u] * scale - L);
                float dp = dpv[u];
                if (p > 0.f) dp = dropout_keep(seed, ((bh * Tq + i) * Tk) + j0 + jj, p) ? dp * inv : 0.f;
                ds = pij * (dp - Di);
            }
            Ss[r * (AT2_T + 4) + jj] = ds;
        }
        __syncwarp();
        for (int jj = 0; jj < AT2_T; ++jj) at2_axpy(g, Ss[r * (AT2_T + 4) + jj], Ks + jj * HP, c0, HS4);
    }
    if (i < Tq) {
#pragma unroll
        for (int t = 0; t < AT2_MAXD; ++t) {
            const int d = c0 + t;
            if (t < CH && d < HS) dq[(bh * Tq + i) * HS + d] += scale * g[t];
        }
    }
}

// dK, dV: one block per (32 keys, b·h), 128 threads = 32 keys × 4 lanes; query tiles recompute
// P, dP, dS; lane l of key j takes queries l, l+4, … of the tile and owns a chunk of dims.
extern "C" __global__ void __launch_bounds__(128) attention_bwd_kv_v2(float* dk, float* dv, const float* dout, const float* lse,
                                                                     const float* dd, const float* q, const float* k,
                                                                     const float* v, const long long* mask, int B, int NH, int Tq,
                                                                     int Tk, int HS, float scale, unsigned long long seed, float p,
                                                                     float inv) {
    DYNAMIC_SHARED(float4, sm4);
    float* sm = reinterpret_cast<float*>(sm4);
    const int HS4 = at2_hs4(HS), HP = at2_stride(HS), CH = at2_chunk(HS);
    float* Ks = sm;                        // [AT2_R][HP]: this block's keys
    float* Vs = Ks + AT2_R * HP;           // [AT2_R][HP]
    float* Qs = Vs + AT2_R * HP;           // [AT2_T][HP]: a tile of queries
    float* Os = Qs + AT2_T * HP;           // [AT2_T][HP]: their dO
    float* Ss = Os + AT2_T * HP;           // [AT2_R][AT2_T + 4]: dS
    float* Ps = Ss + AT2_R * (AT2_T + 4);  // [AT2_R][AT2_T + 4]: P·keep/(1−p)
    float* Ls = Ps + AT2_R * (AT2_T + 4);  // [AT2_T]: L of the tile's queries
    float* Ds = Ls + AT2_T;                // [AT2_T]: D of the tile's queries
    const int tid = threadIdx.x, c = tid >> 2, lane = tid & 3, c0 = lane * CH;
    const int j0 = blockIdx.x * AT2_R, j = j0 + c;
    const long long bh = blockIdx.y;
    const int b = (int)(bh / NH);
    at2_load(Ks, k + bh * Tk * HS, j0, AT2_R, Tk, HS, HP);
    at2_load(Vs, v + bh * Tk * HS, j0, AT2_R, Tk, HS, HP);
    const bool live = j < Tk && (mask == nullptr || mask[(long long)b * Tk + j] != 0);
    const float4* k4 = reinterpret_cast<const float4*>(Ks + c * HP);
    const float4* v4 = reinterpret_cast<const float4*>(Vs + c * HP);
    float gk[AT2_MAXD], gv[AT2_MAXD];
#pragma unroll
    for (int t = 0; t < AT2_MAXD; ++t) gk[t] = gv[t] = 0.f;
    for (int i0 = 0; i0 < Tq; i0 += AT2_T) {
        __syncthreads();
        at2_load(Qs, q + bh * Tq * HS, i0, AT2_T, Tq, HS, HP);
        at2_load(Os, dout + bh * Tq * HS, i0, AT2_T, Tq, HS, HP);
        for (int ii = tid; ii < AT2_T; ii += 128) {
            const int i = i0 + ii;
            Ls[ii] = i < Tq ? lse[bh * Tq + i] : INFINITY;
            Ds[ii] = i < Tq ? dd[bh * Tq + i] : 0.f;
        }
        __syncthreads();
        float dot[AT2_T / 4], dpv[AT2_T / 4];
        at2_dots(dot, dpv, k4, v4, Qs, Os, lane, HP, HS4);
#pragma unroll
        for (int u = 0; u < AT2_T / 4; ++u) {
            const int ii = lane + 4 * u;
            float ds = 0.f, pd = 0.f;
            if (live && Ls[ii] != INFINITY) {
                const float pij = expf(dot[u] * scale - Ls[ii]);
                float dp = dpv[u];
                pd = pij;
                if (p > 0.f) {
                    const bool keep = dropout_keep(seed, ((bh * Tq + i0 + ii) * Tk) + j, p);
                    dp = keep ? dp * inv : 0.f;
                    pd = keep ? pij * inv : 0.f;
                }
                ds = pij * (dp - Ds[ii]);
            }
            Ss[c * (AT2_T + 4) + ii] = ds;
            Ps[c * (AT2_T + 4) + ii] = pd;
        }
        __syncwarp();
        for (int ii = 0; ii < AT2_T; ++ii) {
            at2_axpy(gk, Ss[c * (AT2_T + 4) + ii], Qs + ii * HP, c0, HS4);
            at2_axpy(gv, Ps[c * (AT2_T + 4) + ii], Os + ii * HP, c0, HS4);
        }
    }
    if (j < Tk) {
#pragma unroll
        for (int t = 0; t < AT2_MAXD; ++t) {
            const int d = c0 + t;
            if (t < CH && d < HS) {
                dk[(bh * Tk + j) * HS + d] += scale * gk[t];
                dv[(bh * Tk + j) * HS + d] += gv[t];
            }
        }
    }
}

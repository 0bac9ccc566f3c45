// Fused scaled-dot-product self-attention with a key padding mask and dropout of the probabilities, one op:
//   S = scale·Q·Kᵀ (masked keys → −∞), P = softmax(S) (a fully masked row → P = 0, O = 0),
//   D = P ⊙ keep / (1 − p), O = D·V. keep is the counter-based mask of dropout (dropout_keep, index
//   ((b·NH + h)·Tq + i)·Tk + j); p = 0 keeps everything (inv = 1), so inference pays one branch.
// Shapes: q (B, NH, Tq, HS), k, v (B, NH, Tk, HS), mask (B, Tk) i64 (1 attend, 0 padding) or null,
// probs (B, NH, Tq, Tk) saved for the backward (as the CPU reference does).
// Backward with dP = (dO·Vᵀ) ⊙ keep / (1 − p), dS = P ⊙ (dP − rowsum(P ⊙ dP)):
//   dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Dᵀ·dO.
// Variants:
//   attention_fwd_v1: one block per (query row, batch·head), scores in shared memory — production
//   attention_bwd_q_v1: one block per query row: dS (to scratch) and dQ — production
//   attention_bwd_kv_v1: one block per key row: dK, dV from the dS scratch — production
//   (a flash-style v2 — online softmax, no T×T matrix — is the next step; see benches/RESULTS.md)
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

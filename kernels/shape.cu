// Head split / merge as one permute: swap the middle axes of (A, P, Q, D) → (A, Q, P, D).
//   split_heads: (B, T, NH, HS) → (B, NH, T, HS);  merge_heads: (B, NH, T, HS) → (B, T, NH, HS).
// The backward of each is the inverse swap, accumulating into the gradient (acc = 1).
// Variants: swap12_v1 — grid-stride over output elements (coalesced writes), production.
#include "common.cuh"

extern "C" __global__ void swap12_v1(float* out, const float* in, int A, int P, int Q, int D, int acc) {
    GRID_STRIDE(o, (long long)A * P * Q * D) {
        const int d = (int)(o % D);
        long long r = o / D;
        const int p = (int)(r % P);  // output is (A, Q, P, D)
        r /= P;
        const int q = (int)(r % Q);
        const int a = (int)(r / Q);
        const float v = in[(((long long)a * P + p) * Q + q) * D + d];
        out[o] = acc ? out[o] + v : v;
    }
}

// token_fwd_v1: out (B, C) = in[:, t, :] of in (B, T, C) (BERT's [CLS] for the pooler);
// token_bwd_v1: dx[:, t, :] += dy.
extern "C" __global__ void token_fwd_v1(float* out, const float* in, int B, int T, int C, int t) {
    GRID_STRIDE(i, (long long)B * C) {
        const long long b = i / C;
        out[i] = in[(b * T + t) * C + (i % C)];
    }
}

extern "C" __global__ void token_bwd_v1(float* dx, const float* dy, int B, int T, int C, int t) {
    GRID_STRIDE(i, (long long)B * C) {
        const long long b = i / C;
        dx[(b * T + t) * C + (i % C)] += dy[i];
    }
}

// Embedding lookup (gather) and its scatter-add backward (atomicAdd; rows of padding_idx get no
// gradient, as in torch.nn.functional.embedding(padding_idx=...)). Ids are validated on the host.
// Variants: embedding_fwd_v1, embedding_bwd_v1 — grid-stride over (id, channel), production.
#include "common.cuh"

extern "C" __global__ void embedding_fwd_v1(float* out, const long long* ids, const float* table, long long n, int c) {
    GRID_STRIDE(i, n * c) {
        const long long t = i / c;
        out[i] = table[ids[t] * c + (i % c)];
    }
}

extern "C" __global__ void embedding_bwd_v1(float* dtable, const float* dout, const long long* ids, long long n, int c,
                                            long long padding_idx, int has_padding) {
    GRID_STRIDE(i, n * c) {
        const long long id = ids[i / c];
        if (has_padding && id == padding_idx) continue;
        atomicAdd(&dtable[id * c + (i % c)], dout[i]);
    }
}

// Batched GEMM: C[b] (=, or += when acc) op(A[b]) · op(B[b]), op(A) (M, K), op(B) (K, N), all row-major;
// ta: A is stored (K, M); tb: B is stored (N, K). Batch strides sA, sB, sC in elements (0 = shared,
// e.g. a Linear weight). The engine's GEMM (cuBLAS is only a yardstick in benchmarks).
// Variants:
//   gemm_v1: 64×64 block tile, BK = 16, 256 threads × (4×4) register tile, f32 FMA, bounds-checked
//            loads (any M, N, K) — production
//   (tensor-core bf16 / TF32 variants belong to the performance issue; numbers in benches/RESULTS.md)
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void __launch_bounds__(256) gemm_v1(float* C, const float* A, const float* B, int M, int N, int K,
                                                         int ta, int tb, long long sA, long long sB, long long sC, int acc) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const long long bz = blockIdx.z;
    A += bz * sA;
    B += bz * sB;
    C += bz * sC;
    float r[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int idx = tid + 256 * l;
            int mm, kk;
            if (ta) { mm = idx % BM; kk = idx / BM; } else { mm = idx / BK; kk = idx % BK; }
            const int gm = m0 + mm, gk = k0 + kk;
            float a = 0.f;
            if (gm < M && gk < K) a = ta ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk];
            As[kk][mm] = a;
            int nn;
            if (tb) { nn = idx / BK; kk = idx % BK; } else { nn = idx % BN; kk = idx / BN; }
            const int gn = n0 + nn, gk2 = k0 + kk;
            float b = 0.f;
            if (gn < N && gk2 < K) b = tb ? B[(long long)gn * K + gk2] : B[(long long)gk2 * N + gn];
            Bs[kk][nn] = b;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) r[i][j] = fmaf(a[i], b[j], r[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gn = n0 + tx + 16 * j;
            if (gn >= N) continue;
            float* c = &C[(long long)gm * N + gn];
            *c = acc ? *c + r[i][j] : r[i][j];
        }
    }
}

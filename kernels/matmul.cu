// Batched GEMM: C[b] (=, or += when acc) op(A[b]) · op(B[b]), op(A) (M, K), op(B) (K, N), all row-major;
// ta: A is stored (K, M); tb: B is stored (N, K). Batch strides sA, sB, sC in elements (0 = shared,
// e.g. a Linear weight). The engine's GEMM (cuBLAS is only a yardstick in benchmarks).
// Variants:
//   gemm_v1: 64×64 block tile, BK = 16, 256 threads × (4×4) register tile, f32 FMA, bounds-checked
//            loads (any M, N, K) — production
//   gemm_v2 / gemm_v2_64: 128×128 (256 threads) / 64×128 (128 threads) block tile, BK = 8, 8×8
//            register tile per thread (4×4 quadrants, float4 shared-memory reads), shared memory
//            double-buffered with a register prefetch of the next K slice (one barrier per slice).
//            Verified on the CPU emulator (tests/emu/gemm.cpp); NOT YET RUN ON A GPU — opt-in with
//            ENGRAM_GEMM=v2 until tests/cuda.rs and benches/gpu.rs have run it.
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

// ---- gemm_v2 ------------------------------------------------------------------------------------
// Thread (tx, ty) of a (BN/8) × (BM/8) grid owns rows {ty·4 + i, BM/2 + ty·4 + i} and columns
// {tx·4 + j, BN/2 + tx·4 + j}, i, j < 4: its reads of a K step are two float4 from As and two from Bs.
// Tiles are stored k-major (As[k][m], Bs[k][n]); the rows of the layouts that are read
// k-contiguous from global memory (A not transposed, B transposed) are padded by 4 floats so that
// their transposing stores do not all hit one bank.
#define BK2 8
template <int BM2, int BN2>
struct GemmV2Smem {
    float4 a[2][BK2][(BM2 + 4) / 4];  // padded row lengths (16-byte multiples)
    float4 b[2][BK2][(BN2 + 4) / 4];
};
template <int BM2, int BN2, bool ta, bool tb>
__device__ __forceinline__ void gemm_v2_body(GemmV2Smem<BM2, BN2>& sm, float* C, const float* A, const float* B, int M, int N, int K,
                                             long long sA, long long sB, long long sC, int acc) {
    constexpr int NT = (BM2 / 8) * (BN2 / 8);  // threads
    constexpr int LA = BM2 * BK2 / NT, LB = BN2 * BK2 / NT;  // loads per thread per slice
    constexpr int PA = BM2 + 4, PB = BN2 + 4;
    auto& As4 = sm.a;
    auto& Bs4 = sm.b;
    const int tid = threadIdx.x, tx = tid % (BN2 / 8), ty = tid / (BN2 / 8);
    const int m0 = blockIdx.y * BM2, n0 = blockIdx.x * BN2;
    const long long bz = blockIdx.z;
    A += bz * sA;
    B += bz * sB;
    C += bz * sC;
    float ra[LA], rb[LB];
    // Global → registers: slice k0. Element e of this thread's share: idx = tid + NT·e.
    auto fetch = [&](int k0) {
#pragma unroll
        for (int e = 0; e < LA; ++e) {
            const int idx = tid + NT * e;
            const int mm = ta ? idx % BM2 : idx / BK2, kk = ta ? idx / BM2 : idx % BK2;
            const int gm = m0 + mm, gk = k0 + kk;
            ra[e] = (gm < M && gk < K) ? (ta ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk]) : 0.f;
        }
#pragma unroll
        for (int e = 0; e < LB; ++e) {
            const int idx = tid + NT * e;
            const int nn = tb ? idx / BK2 : idx % BN2, kk = tb ? idx % BK2 : idx / BN2;
            const int gn = n0 + nn, gk = k0 + kk;
            rb[e] = (gn < N && gk < K) ? (tb ? B[(long long)gn * K + gk] : B[(long long)gk * N + gn]) : 0.f;
        }
    };
    // Registers → shared buffer `buf`.
    auto stash = [&](int buf) {
        float* as = reinterpret_cast<float*>(&As4[buf][0][0]);
        float* bs = reinterpret_cast<float*>(&Bs4[buf][0][0]);
#pragma unroll
        for (int e = 0; e < LA; ++e) {
            const int idx = tid + NT * e;
            const int mm = ta ? idx % BM2 : idx / BK2, kk = ta ? idx / BM2 : idx % BK2;
            as[kk * PA + mm] = ra[e];
        }
#pragma unroll
        for (int e = 0; e < LB; ++e) {
            const int idx = tid + NT * e;
            const int nn = tb ? idx / BK2 : idx % BN2, kk = tb ? idx % BK2 : idx / BN2;
            bs[kk * PB + nn] = rb[e];
        }
    };
    float r[8][8] = {};
    fetch(0);
    stash(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += BK2) {
        const bool more = k0 + BK2 < K;
        if (more) fetch(k0 + BK2);  // in flight while this slice computes
#pragma unroll
        for (int kk = 0; kk < BK2; ++kk) {
            const float4 a0 = As4[buf][kk][ty], a1 = As4[buf][kk][BM2 / 8 + ty];
            const float4 b0 = Bs4[buf][kk][tx], b1 = Bs4[buf][kk][BN2 / 8 + tx];
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) r[i][j] = fmaf(a[i], b[j], r[i][j]);
        }
        if (more) {
            // The other buffer was last read in the previous iteration, before its barrier.
            stash(buf ^ 1);
            __syncthreads();
            buf ^= 1;
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int gm = m0 + (i < 4 ? ty * 4 + i : BM2 / 2 + ty * 4 + (i - 4));
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int gn = n0 + (j < 4 ? tx * 4 + j : BN2 / 2 + tx * 4 + (j - 4));
            if (gn >= N) continue;
            float* c = &C[(long long)gm * N + gn];
            *c = acc ? *c + r[i][j] : r[i][j];
        }
    }
}

// The layouts are template parameters (index arithmetic resolved at compile time, fewer registers).
template <int BM2, int BN2>
__device__ __forceinline__ void gemm_v2_dispatch(float* C, const float* A, const float* B, int M, int N, int K, int ta, int tb,
                                                 long long sA, long long sB, long long sC, int acc) {
    __shared__ GemmV2Smem<BM2, BN2> sm;
    if (ta) {
        if (tb) gemm_v2_body<BM2, BN2, true, true>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
        else gemm_v2_body<BM2, BN2, true, false>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
    } else {
        if (tb) gemm_v2_body<BM2, BN2, false, true>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
        else gemm_v2_body<BM2, BN2, false, false>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_v2(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                            int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v2_dispatch<128, 128>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(128) gemm_v2_64(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                               int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v2_dispatch<64, 128>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
#define HAVE_GEMM_V2 1

// Batched GEMM: C[b] (=, or += when acc) op(A[b]) · op(B[b]), op(A) (M, K), op(B) (K, N), all row-major;
// ta: A is stored (K, M); tb: B is stored (N, K). Batch strides sA, sB, sC in elements (0 = shared,
// e.g. a Linear weight). The engine's GEMM (cuBLAS is only a yardstick in benchmarks).
// Variants:
//   gemm_v1: 64×64 block tile, BK = 16, 256 threads × (4×4) register tile, f32 FMA, bounds-checked
//            loads (any M, N, K) — the first kernel (ENGRAM_GEMM=v1)
//   gemm_v2 / gemm_v2_64: 128×128 (256 threads) / 64×128 (128 threads) block tile, BK = 8, 8×8
//            register tile per thread (4×4 quadrants, float4 shared-memory reads), shared memory
//            double-buffered with a register prefetch of the next K slice (one barrier per slice).
//            Verified on the CPU emulator (tests/emu/gemm.cpp) and on an H100 (2026-11-24:
//            tests/cuda.rs, memcheck clean, no racecheck hazard in the op tests, 1.6–2.3× gemm_v1) — production.
//   gemm_v3 / gemm_v3_64: tensor cores. 128×128 (64×128) block tile, BK = 8, 8 warps each owning a
//            64×32 (32×32) warp tile of mma.sync.m16n8k8 TF32 products with f32 accumulators, shared
//            memory double-buffered as in v2. "3xTF32": each f32 operand is split into a TF32 high
//            part and a TF32 residual, and a·b = aₕbₕ + aₕbₗ + aₗbₕ (aₗbₗ, ~2⁻²² relative, is dropped),
//            so the result keeps f32-level accuracy (the CPU parity tolerances hold). Opt-in with
//            ENGRAM_GEMM=v3. Each k-slice's products are summed from zero and then added to the
//            running total in f32: the tensor cores' adds round toward zero, and 3xTF32 straight
//            into the total drifted 12× past f32 error at K = 3072 on an H100 (2026-11-24).
//            Verified on the CPU emulator, whose mma follows the PTX ISA fragment layouts and
//            rounds toward zero (tests/emu/gemm.cpp), and on an H100 (tests/cuda.rs, benches/gpu.rs).
//            ptxas sm_90: 186 / 128 registers, no spills, 24 / 18 KiB shared (BK = 16 needed 255
//            registers and spilled).
//   gemm_v3_tf32 / gemm_v3_tf32_64: the same kernel with one TF32 product per term (aₕbₕ): 3× fewer
//            tensor-core instructions, ~10-bit mantissa inputs (what PyTorch's allow_tf32 and
//            cuBLAS's TF32 math mode do). Opt-in with ENGRAM_GEMM=tf32; tested against products
//            of TF32-rounded operands at f32 tolerance. ptxas sm_90: 171 / 124 registers, no spills.
//   gemm_v3_bf16 / gemm_v3_bf16_64: bf16 autocast (Tape::bf16 on the GPU, what the CPU's
//            ops::gemm_bf16 computes): every operand rounded to bf16 (nearest, ties to even; NaN
//            kept; subnormals to signed zero, as AVX512_BF16 does) once, as it is stashed in shared
//            memory as bf16 (BK = 16, two per 32-bit word: half v3's shared memory per k), then one
//            mma.sync.m16n8k16 bf16 per 16×8×16 tile with f32 accumulators — the exact-products,
//            f32-sums GEMM of autocast; it differs from the CPU's only in the order of the sums.
//            Chosen by the linear layers of a bf16 tape, whatever ENGRAM_GEMM says. Verified on the
//            CPU emulator (its bf16 mma follows the PTX ISA's fragment layouts, checked against
//            formulas written independently) against an f64 reference on rounded operands at f32
//            tolerance, and on an H100. ptxas sm_90: 244 / 172 registers (the 16-deep prefetch),
//            no spills, 24 / 18 KiB shared.
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

// ---- slices of A and B, shared by gemm_v2 and gemm_v3 --------------------------------------------
// Element e of thread tid's share of a BK-deep slice is idx = tid + NT·e; consecutive threads run
// along the operand's contiguous dimension (m for a transposed A, k otherwise; k for a transposed
// B, n otherwise), so the global reads coalesce. Out-of-range elements read as 0.
template <int BM_, int BK_, bool ta>
__device__ __forceinline__ void a_slot(int idx, int& mm, int& kk) {
    mm = ta ? idx % BM_ : idx / BK_;
    kk = ta ? idx / BM_ : idx % BK_;
}
template <int BN_, int BK_, bool tb>
__device__ __forceinline__ void b_slot(int idx, int& nn, int& kk) {
    nn = tb ? idx / BK_ : idx % BN_;
    kk = tb ? idx % BK_ : idx / BN_;
}
// Global → registers: this thread's BM_·BK_/NT elements of A's slice at k0 (ra) and BN_·BK_/NT of B's (rb).
template <int BM_, int BN_, int BK_, int NT, bool ta, bool tb>
__device__ __forceinline__ void fetch_slice(float* ra, float* rb, const float* A, const float* B, int M, int N, int K, int m0,
                                            int n0, int k0) {
#pragma unroll
    for (int e = 0; e < BM_ * BK_ / NT; ++e) {
        int mm, kk;
        a_slot<BM_, BK_, ta>(threadIdx.x + NT * e, mm, kk);
        const int gm = m0 + mm, gk = k0 + kk;
        ra[e] = (gm < M && gk < K) ? (ta ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk]) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < BN_ * BK_ / NT; ++e) {
        int nn, kk;
        b_slot<BN_, BK_, tb>(threadIdx.x + NT * e, nn, kk);
        const int gn = n0 + nn, gk = k0 + kk;
        rb[e] = (gn < N && gk < K) ? (tb ? B[(long long)gn * K + gk] : B[(long long)gk * N + gn]) : 0.f;
    }
}

// Registers → shared memory: element e of each share goes where store_a(mm, kk, v) /
// store_b(nn, kk, v) put it (each kernel has its own shared layout).
template <int BM_, int BN_, int BK_, int NT, bool ta, bool tb, class SA, class SB>
__device__ __forceinline__ void stash_slice(const float* ra, const float* rb, SA&& store_a, SB&& store_b) {
#pragma unroll
    for (int e = 0; e < BM_ * BK_ / NT; ++e) {
        int mm, kk;
        a_slot<BM_, BK_, ta>(threadIdx.x + NT * e, mm, kk);
        store_a(mm, kk, ra[e]);
    }
#pragma unroll
    for (int e = 0; e < BN_ * BK_ / NT; ++e) {
        int nn, kk;
        b_slot<BN_, BK_, tb>(threadIdx.x + NT * e, nn, kk);
        store_b(nn, kk, rb[e]);
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
    auto fetch = [&](int k0) { fetch_slice<BM2, BN2, BK2, NT, ta, tb>(ra, rb, A, B, M, N, K, m0, n0, k0); };
    // Registers → shared buffer `buf` (k-major).
    auto stash = [&](int buf) {
        float* as = reinterpret_cast<float*>(&As4[buf][0][0]);
        float* bs = reinterpret_cast<float*>(&Bs4[buf][0][0]);
        stash_slice<BM2, BN2, BK2, NT, ta, tb>(
            ra, rb, [&](int mm, int kk, float v) { as[kk * PA + mm] = v; }, [&](int nn, int kk, float v) { bs[kk * PB + nn] = v; });
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

// The layouts as template parameters (index arithmetic resolved at compile time, fewer
// registers): f(Flag<ta>, Flag<tb>) for the runtime ta, tb.
template <bool B_>
struct Flag {
    static constexpr bool value = B_;
};
template <class F>
__device__ __forceinline__ void with_layouts(int ta, int tb, F&& f) {
    if (ta) {
        if (tb) f(Flag<true>{}, Flag<true>{});
        else f(Flag<true>{}, Flag<false>{});
    } else {
        if (tb) f(Flag<false>{}, Flag<true>{});
        else f(Flag<false>{}, Flag<false>{});
    }
}

template <int BM2, int BN2>
__device__ __forceinline__ void gemm_v2_dispatch(float* C, const float* A, const float* B, int M, int N, int K, int ta, int tb,
                                                 long long sA, long long sB, long long sC, int acc) {
    __shared__ GemmV2Smem<BM2, BN2> sm;
    with_layouts(ta, tb, [&](auto a_t, auto b_t) {
        gemm_v2_body<BM2, BN2, decltype(a_t)::value, decltype(b_t)::value>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
    });
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

// ---- gemm_v3 (tensor cores) --------------------------------------------------------------------
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 fragments (PTX ISA), lane = 4·g + t:
//   A (16×8, row-major):  a0 (row g, k t)   a1 (g+8, t)   a2 (g, t+4)   a3 (g+8, t+4)
//   B (8×8, "col"):       b0 (k t, col g)   b1 (k t+4, col g)
//   C/D (16×8):           c0 (row g, col 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1)
// The CPU emulator (kernels/emu/cuda_emu.h) implements the instruction from these layouts, so a
// kernel that reads its fragments wrongly fails there too.
__device__ __forceinline__ unsigned tf32_rna(float x) {
#ifdef ENGRAM_EMU
    return emu::cvt_rna_tf32(x);
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}
// x rounded to bf16 (nearest, ties to even), as the f32 it stands for: low 16 bits zero, so the
// TF32 mma reads it exactly. NaN stays a (quiet) NaN, ±Inf stays, a subnormal becomes a signed
// zero: bit for bit the CPU's ops::gemm_bf16::bf16_bits.
__device__ __forceinline__ float bf16_rne(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float((u | 0x00400000u) & 0xffff0000u);
    if ((u & 0x7f800000u) == 0u) return __uint_as_float(u & 0x80000000u);
    return __uint_as_float((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
}
// d += A·B for one 16×8×8 tile (a warp-wide instruction: every lane of the warp must execute it).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#ifdef ENGRAM_EMU
    emu::mma_m16n8k8_tf32(d, a, b);
#else
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

#define BK3 8
#define PK3 (BK3 + 4)  // padded rows: a fragment read (row g, column t) touches 32 different banks
template <int BM3>
struct GemmV3Smem {
    float a[2][BM3][PK3];  // [buffer][m][k]
    float b[2][128][PK3];  // [buffer][n][k]
};
// How gemm_v3 multiplies: 3xTF32 (f32 accuracy), one TF32 product, or bf16 autocast.
// 1: each k-slice's mma products summed from zero, then added to the running total in f32 (see
// gemm_v3_body). 0 (only tests/kernels_emulated.rs's mutant): mma straight into the total.
#define V3_FRESH_SLICES 1
enum V3Mode { V3_SPLIT = 0, V3_TF32 = 1, V3_BF16 = 2 };

// bf16 mode: BK = 16 slices held as bf16 (two per 32-bit word, lower k in the lower half, as the
// m16n8k16 fragments want them), rows padded to 12 words so a fragment read (row g, word t)
// touches 32 different banks.
#define BK3H 16
#define PK3H (BK3H + 8)
template <int BM3>
struct GemmV3SmemBf16 {
    unsigned short a[2][BM3][PK3H];  // [buffer][m][k], bf16 bits
    unsigned short b[2][128][PK3H];  // [buffer][n][k]
};
// The 32-bit word holding k = 2w, 2w + 1 of a bf16 row.
__device__ __forceinline__ unsigned bf16_pair(const unsigned short* row, int w) {
    return *reinterpret_cast<const unsigned*>(row + 2 * w);
}
__device__ __forceinline__ unsigned short bf16_bits(float x) {
    return (unsigned short)(__float_as_uint(bf16_rne(x)) >> 16);
}
// d += A·B for one 16×8×16 bf16 tile, f32 accumulators (warp-wide).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#ifdef ENGRAM_EMU
    emu::mma_m16n8k16_bf16(d, a, b);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Warps as 2 (m) × 4 (n); warp w owns rows wm … wm + BM3/2 and columns wn … wn + 32 of the block tile.
template <int BM3, bool ta, bool tb, int mode, class Smem>
__device__ __forceinline__ void gemm_v3_body(Smem& sm, float* C, const float* A, const float* B, int M, int N, int K,
                                             long long sA, long long sB, long long sC, int acc) {
    constexpr bool split = mode == V3_SPLIT, bf16 = mode == V3_BF16;
    constexpr int BN3 = 128, NT = 256, BKS = bf16 ? BK3H : BK3;
    constexpr int MI = BM3 / 32, NJ = 4;                    // m16 and n8 tiles per warp
    constexpr int LA = BM3 * BKS / NT, LB = BN3 * BKS / NT;  // loads per thread per slice
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 2) * (BM3 / 2), wn = (warp & 3) * 32;
    const int m0 = blockIdx.y * BM3, n0 = blockIdx.x * BN3;
    const long long bz = blockIdx.z;
    A += bz * sA;
    B += bz * sB;
    C += bz * sC;
    float ra[LA], rb[LB];
    auto fetch = [&](int k0) { fetch_slice<BM3, BN3, BKS, NT, ta, tb>(ra, rb, A, B, M, N, K, m0, n0, k0); };
    // Registers → shared buffer `buf` (m- and n-major: fragments read along k); bf16 rounds here,
    // once per element.
    auto stash = [&](int buf) {
        if constexpr (bf16) {
            stash_slice<BM3, BN3, BKS, NT, ta, tb>(
                ra, rb, [&](int mm, int kk, float v) { sm.a[buf][mm][kk] = bf16_bits(v); },
                [&](int nn, int kk, float v) { sm.b[buf][nn][kk] = bf16_bits(v); });
        } else {
            stash_slice<BM3, BN3, BKS, NT, ta, tb>(
                ra, rb, [&](int mm, int kk, float v) { sm.a[buf][mm][kk] = v; }, [&](int nn, int kk, float v) { sm.b[buf][nn][kk] = v; });
        }
    };
    // The tensor cores add into their accumulator rounding toward zero (measured on an H100:
    // 3xTF32 straight into d drifted by −2.7e-4 over K = 3072, 12× the CPU's f32 error), so each
    // slice's products go into a fresh zero accumulator `e` and join d by an ordinary
    // round-to-nearest f32 add (V3_FRESH_SLICES): the drift stays within one slice (f32-level sums at any K).
    float d[MI][NJ][4] = {};
    auto flush = [](float (&di)[NJ][4], const float (&e)[NJ][4]) {
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) di[j][q] += e[j][q];
    };
    fetch(0);
    stash(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += BKS) {
        const bool more = k0 + BKS < K;
        if (more) fetch(k0 + BKS);  // in flight while this slice computes
        if constexpr (bf16) {
            // One m16n8k16 per tile and slice: B words for the warp's four n8 tiles, then A's
            // words one m16 tile at a time.
            unsigned bw[NJ][2];
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const unsigned short* row = sm.b[buf][wn + 8 * j + g];
                bw[j][0] = bf16_pair(row, t);
                bw[j][1] = bf16_pair(row, t + 4);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const unsigned short* r0 = sm.a[buf][wm + 16 * i + g];
                const unsigned short* r8 = sm.a[buf][wm + 16 * i + g + 8];
                const unsigned aw[4] = {bf16_pair(r0, t), bf16_pair(r8, t), bf16_pair(r0, t + 4), bf16_pair(r8, t + 4)};
                float fresh[NJ][4] = {};
                auto& e = V3_FRESH_SLICES ? fresh : d[i];
#pragma unroll
                for (int j = 0; j < NJ; ++j) mma_bf16(e[j], aw, bw[j]);
                if (V3_FRESH_SLICES) flush(d[i], e);
            }
        } else {
            // x → its TF32 high part (hi) and, with `split`, the TF32 rounding of the rest (lo).
            auto to_tf32 = [&](float x, unsigned& hi, unsigned& lo) {
                hi = tf32_rna(x);
                if (split) lo = tf32_rna(x - __uint_as_float(hi));
            };
#pragma unroll
            for (int ks = 0; ks < BKS; ks += 8) {
                // B fragments for the warp's four n8 tiles stay in registers; A fragments are made
                // one m16 tile at a time (fewer live registers: ptxas keeps gemm_v3 from spilling).
                unsigned bh[NJ][2], bl[NJ][2];
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    const int c = wn + 8 * j + g;
                    to_tf32(sm.b[buf][c][ks + t], bh[j][0], bl[j][0]);
                    to_tf32(sm.b[buf][c][ks + t + 4], bh[j][1], bl[j][1]);
                }
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    unsigned ah[4], al[4];
                    const int r = wm + 16 * i + g;
                    to_tf32(sm.a[buf][r][ks + t], ah[0], al[0]);
                    to_tf32(sm.a[buf][r + 8][ks + t], ah[1], al[1]);
                    to_tf32(sm.a[buf][r][ks + t + 4], ah[2], al[2]);
                    to_tf32(sm.a[buf][r + 8][ks + t + 4], ah[3], al[3]);
                    // The small cross terms first, then the main one; four independent tiles per pass.
                    float fresh[NJ][4] = {};
                    auto& e = V3_FRESH_SLICES ? fresh : d[i];
                    if (split) {
#pragma unroll
                        for (int j = 0; j < NJ; ++j) mma_tf32(e[j], al, bh[j]);
#pragma unroll
                        for (int j = 0; j < NJ; ++j) mma_tf32(e[j], ah, bl[j]);
                    }
#pragma unroll
                    for (int j = 0; j < NJ; ++j) mma_tf32(e[j], ah, bh[j]);
                    if (V3_FRESH_SLICES) flush(d[i], e);
                }
            }
        }
        if (more) {
            stash(buf ^ 1);  // last read in the previous iteration, before its barrier
            __syncthreads();
            buf ^= 1;
        }
    }
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int gm = m0 + wm + 16 * i + g + 8 * (q >> 1), gn = n0 + wn + 8 * j + 2 * t + (q & 1);
                if (gm >= M || gn >= N) continue;
                float* c = &C[(long long)gm * N + gn];
                *c = acc ? *c + d[i][j][q] : d[i][j][q];
            }
}

template <int BM3, int mode>
__device__ __forceinline__ void gemm_v3_dispatch(float* C, const float* A, const float* B, int M, int N, int K, int ta, int tb,
                                                 long long sA, long long sB, long long sC, int acc) {
    if constexpr (mode == V3_BF16) {
        __shared__ GemmV3SmemBf16<BM3> sm;
        with_layouts(ta, tb, [&](auto a_t, auto b_t) {
            gemm_v3_body<BM3, decltype(a_t)::value, decltype(b_t)::value, mode>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
        });
    } else {
        __shared__ GemmV3Smem<BM3> sm;
        with_layouts(ta, tb, [&](auto a_t, auto b_t) {
            gemm_v3_body<BM3, decltype(a_t)::value, decltype(b_t)::value, mode>(sm, C, A, B, M, N, K, sA, sB, sC, acc);
        });
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_v3(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<128, V3_SPLIT>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(256) gemm_v3_64(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                   int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<64, V3_SPLIT>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(256) gemm_v3_tf32(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                     int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<128, V3_TF32>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(256) gemm_v3_tf32_64(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                        int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<64, V3_TF32>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(256) gemm_v3_bf16(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                     int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<128, V3_BF16>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
extern "C" __global__ void __launch_bounds__(256) gemm_v3_bf16_64(float* C, const float* A, const float* B, int M, int N, int K, int ta,
                                                                        int tb, long long sA, long long sB, long long sC, int acc) {
    gemm_v3_dispatch<64, V3_BF16>(C, A, B, M, N, K, ta, tb, sA, sB, sC, acc);
}
#define HAVE_GEMM_V3 1

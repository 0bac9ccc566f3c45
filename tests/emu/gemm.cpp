// kernels/matmul.cu on the CPU emulator (kernels/emu/cuda_emu.h), against an f64 reference:
// every GEMM variant (the bf16 ones against rounded operands), both operand layouts, ragged shapes (M, N, K not multiples of any tile),
// batch strides (including a shared B), overwrite (output poisoned with NaN first) and
// accumulate. Built (with AddressSanitizer where the compiler has it, so an out-of-bounds read or
// write fails too) and run by tests/kernels_emulated.rs. Exit status 0 = all passed.
#include "../../kernels/matmul.cu"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>

enum class Round { None, Tf32, Bf16 };
using Kernel = void (*)(float*, const float*, const float*, int, int, int, int, int, long long, long long, long long, int);
struct Variant {
    const char* name;
    Kernel k;
    int bm, bn, threads;
    double tol;  // max |C − reference| / Σ|a·b|
    Round round; // the reference multiplies the operands rounded as the kernel rounds them (TF32: nearest,
                 // ties away; bf16 autocast: nearest even), so every variant is held to f32 tolerance
};

// bf16 rounding written independently of the kernel's bit trick: 8 significant bits by
// nearbyint (ties to even) on the f64 significand; NaN kept, subnormals flushed to signed zero
// (AVX512_BF16's convention, which the CPU GEMM and the kernel follow), overflow to ±Inf.
static float bf16_reference(float x) {
    if (std::isnan(x) || std::isinf(x)) return x;
    if (std::fpclassify(x) == FP_SUBNORMAL) return std::copysign(0.f, x);
    int e;
    const double m = std::frexp((double)x, &e);
    return (float)std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);
}

// TF32 as cvt.rna makes it, written independently of the kernel's bit trick: 11 significant bits,
// ties away from zero (std::round); NaN and Inf kept.
static float tf32_reference(float x) {
    if (std::isnan(x) || std::isinf(x) || x == 0.f) return x;
    int e;
    const double m = std::frexp((double)x, &e);
    return (float)std::ldexp(std::round(std::ldexp(m, 11)), e - 11);
}

// With `drift`, also the mean signed error (toward larger |C|) over the outputs against the mean
// Σ|a·b|: f32 sums wander both ways, a GEMM whose sums lose bits one way (the tensor cores' adds
// round toward zero; kernels/emu/cuda_emu.h models them) drifts with K. Used on a long-K shape.
static void check(const Variant& v, int batch, int M, int N, int K, int ta, int tb, bool shared_b, int acc, std::mt19937& rng,
                  bool drift = false) {
    std::uniform_real_distribution<float> U(-1.f, 1.f);
    const long long sA = (long long)M * K, sB = shared_b ? 0 : (long long)K * N, sC = (long long)M * N;
    std::vector<float> A(batch * sA), B(shared_b ? K * N : batch * sB), C(batch * sC), C0;
    for (auto& x : A) x = U(rng);
    for (auto& x : B) x = U(rng);
    for (auto& x : C) x = acc ? U(rng) : NAN;  // poisoned: every element must be written
    C0 = C;
    emu::launch(dim3((N + v.bn - 1) / v.bn, (M + v.bm - 1) / v.bm, batch), dim3(v.threads),
                [&] { v.k(C.data(), A.data(), B.data(), M, N, K, ta, tb, sA, sB, sC, acc); });
    double worst = 0, signed_err = 0, sum_mag = 0;
    for (int b = 0; b < batch; ++b)
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                double ref = acc ? C0[b * sC + (long long)m * N + n] : 0.0, mag = std::fabs(ref);
                auto op = [&](float x) {
                    return (double)(v.round == Round::Bf16 ? bf16_reference(x) : v.round == Round::Tf32 ? tf32_reference(x) : x);
                };
                for (int k = 0; k < K; ++k) {
                    const double a = op(ta ? A[b * sA + (long long)k * M + m] : A[b * sA + (long long)m * K + k]);
                    const double bb = op(tb ? B[b * sB + (long long)n * K + k] : B[b * sB + (long long)k * N + n]);
                    ref += a * bb;
                    mag += std::fabs(a * bb);
                }
                const double got = C[b * sC + (long long)m * N + n];
                const double err = std::fabs(got - ref) / (1e-30 + mag);
                if (!(err <= v.tol)) {  // also catches NaN (unwritten) outputs
                    std::printf("FAIL %s batch %d M %d N %d K %d ta %d tb %d shared_b %d acc %d: C[%d][%d][%d] = %g, reference %g\n",
                                    v.name, batch, M, N, K, ta, tb, (int)shared_b, acc, b, m, n, got, ref);
                    std::printf("FAILED\n");
                    std::exit(1);  // the first failure is enough (and keeps broken-kernel runs short)
                }
                worst = std::max(worst, err);
                signed_err += (got - ref) * (ref < 0 ? -1.0 : 1.0);
                sum_mag += mag;
            }
    const double drift_rel = std::fabs(signed_err) / (1e-30 + sum_mag);
    // Measured with the emulator's tensor-core model at 64×64×1024: the v3 kernels (each slice
    // summed from zero, then added to the total) 0.1–1.5e-9, v1/v2 ≤ 6.3e-10; mma products added
    // straight into the total (tests/kernels_emulated.rs's v3-unflushed mutant) 2.7e-7.
    if (drift && !(drift_rel <= 2e-8)) {
        std::printf("FAIL %s M %d N %d K %d: mean signed error %.3e of the mean Σ|a·b| (sums drift one way)\nFAILED\n", v.name, M, N, K,
                    drift_rel);
        std::exit(1);
    }
    char drift_note[48] = "";
    if (drift) std::snprintf(drift_note, sizeof drift_note, "  drift %.1e", drift_rel);
    std::printf("ok   %-15s batch %d M %4d N %4d K %4d ta %d tb %d shared_b %d acc %d  max rel err %.2e%s\n", v.name, batch, M, N, K,
                ta, tb, (int)shared_b, acc, worst, drift_note);
}

// The emulated mma.sync.m16n8k8 TF32 instruction itself: one warp multiplies a random A (16×8)
// by a random B (8×8) with fragments loaded per the PTX ISA formulas (lane = 4g + t); D must be
// A·B everywhere, and at a few lanes the positions are pinned to entries read off the ISA's
// fragment figures (so a formula wrong in the same way here and in the emulator still fails).
static bool mma_layout_matches_the_isa(std::mt19937& rng) {
#ifdef HAVE_GEMM_V3
    std::uniform_real_distribution<float> U(-1.f, 1.f);
    float A[16][8], B[8][8], D[32][4];
    for (auto& r : A)
        for (auto& x : r) x = U(rng);
    for (auto& r : B)
        for (auto& x : r) x = U(rng);
    emu::launch(dim3(1), dim3(32), [&] {
        const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
        const unsigned a[4] = {tf32_rna(A[g][t]), tf32_rna(A[g + 8][t]), tf32_rna(A[g][t + 4]), tf32_rna(A[g + 8][t + 4])};
        const unsigned b[2] = {tf32_rna(B[t][g]), tf32_rna(B[t + 4][g])};
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_tf32(d, a, b);
        for (int q = 0; q < 4; ++q) D[lane][q] = d[q];
    });
    auto tf = [](float x) { return (double)__uint_as_float(tf32_rna(x)); };
    auto ref = [&](int r, int c) {
        double s = 0;
        for (int k = 0; k < 8; ++k) s += tf(A[r][k]) * tf(B[k][c]);
        return s;
    };
    for (int lane = 0; lane < 32; ++lane)
        for (int q = 0; q < 4; ++q) {
            const int r = lane / 4 + 8 * (q / 2), c = 2 * (lane % 4) + q % 2;
            if (std::fabs(D[lane][q] - ref(r, c)) > 1e-5) return false;
        }
    // From the figures: lane 0 holds D (0,0) (0,1) (8,0) (8,1); lane 5 (1,2) (1,3) (9,2) (9,3);
    // lane 31 (7,6) (7,7) (15,6) (15,7).
    const int pinned[3][5][2] = {{{0, 0}, {0, 0}, {0, 1}, {8, 0}, {8, 1}},
                                 {{5, 0}, {1, 2}, {1, 3}, {9, 2}, {9, 3}},
                                 {{31, 0}, {7, 6}, {7, 7}, {15, 6}, {15, 7}}};
    for (const auto& p : pinned)
        for (int q = 0; q < 4; ++q)
            if (std::fabs(D[p[0][0]][q] - ref(p[q + 1][0], p[q + 1][1])) > 1e-5) return false;
    // TF32 rounding is to nearest (ties away): 1 + 2⁻¹¹ + 2⁻¹³ rounds up to 1 + 2⁻¹⁰, 1 + 2⁻¹² down to 1.
    if (tf(1.f + 0x1p-11f + 0x1p-13f) != 1.0 + 0x1p-10 || tf(1.f + 0x1p-12f) != 1.0 || tf(-1.f - 0x1p-11f) != -1.0 - 0x1p-10) return false;
#else
    (void)rng;
#endif
    return true;
}

// The emulated mma.sync.m16n8k16 bf16 instruction: one warp multiplies a random bf16 A (16×16) by
// B (16×8), each lane packing its words by the ISA's formulas written independently of the
// emulator's (register r of lane l: A row l/4 + 8·(r % 2), word l % 4 + 4·(r / 2); B column l/4,
// word l % 4 + 4·r; word w = k 2w (low half) and 2w + 1 (high half)); D must be A·B everywhere.
static bool mma_bf16_layout_matches_the_isa(std::mt19937& rng) {
#ifdef HAVE_GEMM_V3
    std::uniform_real_distribution<float> U(-1.f, 1.f);
    float A[16][16], B[16][8], D[32][4];
    for (auto& r : A)
        for (auto& x : r) x = bf16_reference(U(rng));
    for (auto& r : B)
        for (auto& x : r) x = bf16_reference(U(rng));
    auto bits = [](float x) {
        uint32_t u;
        std::memcpy(&u, &x, 4);
        return u >> 16;
    };
    emu::launch(dim3(1), dim3(32), [&] {
        const int l = threadIdx.x;
        unsigned a[4], b[2];
        for (int r = 0; r < 4; ++r) {
            const int row = l / 4 + 8 * (r % 2), w = l % 4 + 4 * (r / 2);
            a[r] = bits(A[row][2 * w]) | bits(A[row][2 * w + 1]) << 16;
        }
        for (int r = 0; r < 2; ++r) {
            const int col = l / 4, w = l % 4 + 4 * r;
            b[r] = bits(B[2 * w][col]) | bits(B[2 * w + 1][col]) << 16;
        }
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_bf16(d, a, b);
        for (int q = 0; q < 4; ++q) D[l][q] = d[q];
    });
    for (int lane = 0; lane < 32; ++lane)
        for (int q = 0; q < 4; ++q) {
            const int r = lane / 4 + 8 * (q / 2), c = 2 * (lane % 4) + q % 2;
            double ref = 0;
            for (int k = 0; k < 16; ++k) ref += (double)A[r][k] * B[k][c];
            if (std::fabs(D[lane][q] - ref) > 1e-5) return false;
        }
#else
    (void)rng;
#endif
    return true;
}

// The kernel's bf16 rounding on the cases random data almost never hits: exact ties both ways,
// just above a tie, NaN, ±Inf, overflow, subnormals, and agreement with the reference on a sweep.
static bool bf16_rounding_is_nearest_even() {
#ifdef HAVE_GEMM_V3
    struct Case {
        float x, want;
    };
    const Case cases[] = {
        {1.f + 0x1p-8f, 1.f},                        // tie, even below
        {1.f + 0x1p-7f + 0x1p-8f, 1.f + 0x1p-6f},    // tie, even above
        {-(1.f + 0x1p-8f + 0x1p-16f), -(1.f + 0x1p-7f)},  // just above a tie: away
        {1.f + 0x1p-9f, 1.f},                        // below a tie
        {0x1.fffffep+127f, INFINITY},                // the largest float rounds up past the largest bf16
        {INFINITY, INFINITY},
        {-INFINITY, -INFINITY},
        {1e-40f, 0.f},                               // subnormal: flushed
        {0x1p-126f, 0x1p-126f},                      // smallest normal: kept
    };
    for (const auto& c : cases) {
        const float got = bf16_rne(c.x);
        if (got != c.want || std::signbit(got) != std::signbit(c.want)) {
            std::printf("bf16_rne(%a) = %a, want %a\n", c.x, got, c.want);
            return false;
        }
    }
    if (!std::signbit(bf16_rne(-1e-40f)) || !std::isnan(bf16_rne(NAN)) || !std::isnan(bf16_rne(-NAN))) return false;
    std::mt19937 rng(11);
    std::uniform_int_distribution<unsigned> bits;
    for (int i = 0; i < 200000; ++i) {
        float x;
        const unsigned u = bits(rng);
        std::memcpy(&x, &u, 4);
        const float got = bf16_rne(x), want = bf16_reference(x);
        if (std::isnan(x) ? !std::isnan(got) : std::memcmp(&got, &want, 4) != 0) {
            std::printf("bf16_rne(%a) = %a, reference %a\n", x, got, want);
            return false;
        }
    }
#endif
    return true;
}

int main(int argc, char** argv) {
    const std::string only = argc > 1 ? argv[1] : "";
    {
        std::mt19937 rng(3);
        if (!mma_layout_matches_the_isa(rng)) {
            std::printf("FAIL mma.sync m16n8k8 TF32 emulation disagrees with the PTX ISA fragment layout\nFAILED\n");
            return 1;
        }
        std::printf("ok   mma.sync m16n8k8 TF32 fragment layout (PTX ISA) and cvt.rna rounding\n");
        if (!mma_bf16_layout_matches_the_isa(rng)) {
            std::printf("FAIL mma.sync m16n8k16 bf16 emulation disagrees with the PTX ISA fragment layout\nFAILED\n");
            return 1;
        }
        std::printf("ok   mma.sync m16n8k16 bf16 fragment layout (PTX ISA)\n");
        if (!bf16_rounding_is_nearest_even()) {
            std::printf("FAIL bf16 rounding of the bf16 GEMM\nFAILED\n");
            return 1;
        }
        std::printf("ok   bf16 rounding (nearest even, NaN, Inf, subnormals)\n");
    }
    std::vector<Variant> variants = {
        {"gemm_v1", gemm_v1, 64, 64, 256, 1e-5, Round::None},
#ifdef HAVE_GEMM_V2
        {"gemm_v2", gemm_v2, 128, 128, 256, 1e-5, Round::None},
        {"gemm_v2_64", gemm_v2_64, 64, 128, 128, 1e-5, Round::None},
#endif
#ifdef HAVE_GEMM_V3
        {"gemm_v3", gemm_v3, 128, 128, 256, 1e-5, Round::None},
        {"gemm_v3_64", gemm_v3_64, 64, 128, 256, 1e-5, Round::None},
        {"gemm_v3_tf32", gemm_v3_tf32, 128, 128, 256, 1e-5, Round::Tf32},
        {"gemm_v3_tf32_64", gemm_v3_tf32_64, 64, 128, 256, 1e-5, Round::Tf32},
        {"gemm_v3_bf16", gemm_v3_bf16, 128, 128, 256, 1e-5, Round::Bf16},
        {"gemm_v3_bf16_64", gemm_v3_bf16_64, 64, 128, 256, 1e-5, Round::Bf16},
#endif
    };
    std::mt19937 rng(7);
    struct Shape {
        int batch, M, N, K;
        bool shared_b;
    };
    const Shape shapes[] = {
        {1, 1, 1, 1, false},      {1, 130, 129, 17, false}, {2, 67, 200, 33, false},
        {1, 128, 128, 64, false}, {3, 40, 70, 9, true},     {1, 257, 131, 8, false},
    };
    for (const auto& v : variants) {
        if (!only.empty() && only != v.name) continue;
        for (const auto& s : shapes)
            for (int ta = 0; ta < 2; ++ta)
                for (int tb = 0; tb < 2; ++tb)
                    for (int acc = 0; acc < 2; ++acc) check(v, s.batch, s.M, s.N, s.K, ta, tb, s.shared_b, acc, rng);
        check(v, 1, 64, 64, 1024, 0, 0, false, 0, rng, /*drift=*/true);
    }
    std::printf("passed\n");
    return 0;
}

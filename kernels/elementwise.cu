// Elementwise kernels: add, scale, bias add (+ its column-sum backward), and the helpers the
// autograd and optimizers use on the GPU (axpy for gradient accumulation, in-place scale,
// sum of squares for grad-norm clipping).
//
// Variants (memory-bound; one grid-stride loop each):
//   add_fwd_v1, scale_fwd_v1, bias_add_fwd_v1, bias_fill_v1, axpy_v1, scale_inplace_v1  — production
//   sum_rows_v1: one thread per column walking the rows (coalesced across columns) — production
//   sum_squares_v1: per-thread f64 partials, block reduce, one f64 atomicAdd per block — production
// Timings: see benches/RESULTS.md.
#include "common.cuh"

extern "C" __global__ void add_fwd_v1(float* y, const float* a, const float* b, long long n) {
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

extern "C" __global__ void scale_fwd_v1(float* y, const float* x, float s, long long n) {
    GRID_STRIDE(i, n) y[i] = x[i] * s;
}

// y (rows, c) = x + b broadcast over rows.
extern "C" __global__ void bias_add_fwd_v1(float* y, const float* x, const float* b, long long rows, int c) {
    GRID_STRIDE(i, rows * c) y[i] = x[i] + b[i % c];
}

// y (rows, c) = b broadcast (the starting value of a Linear output before the GEMM adds x·wᵀ).
extern "C" __global__ void bias_fill_v1(float* y, const float* b, long long rows, int c) {
    GRID_STRIDE(i, rows * c) y[i] = b[i % c];
}

// db (c) += Σ_rows dy (rows, c).
extern "C" __global__ void sum_rows_v1(float* db, const float* dy, long long rows, int c) {
    GRID_STRIDE(j, c) {
        float acc = 0.f;
        for (long long r = 0; r < rows; ++r) acc += dy[r * c + j];
        db[j] += acc;
    }
}

// y += alpha · x
extern "C" __global__ void axpy_v1(float* y, const float* x, float alpha, long long n) {
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

extern "C" __global__ void scale_inplace_v1(float* x, float s, long long n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// *acc += Σ x² (f64). Launch with at most 1024 blocks of 256 threads.
extern "C" __global__ void sum_squares_v1(double* acc, const float* x, long long n) {
    double s = 0.0;
    GRID_STRIDE(i, n) s += (double)x[i] * (double)x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

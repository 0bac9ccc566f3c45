// Block copies for `concat` and `narrow` along any axis. A tensor is viewed as (outer, cols) rows
// where cols = dim(axis) · inner; each op moves a `len`-wide column band of every row:
//   dst[r, dst_off + j] (+)= src[r, src_off + j]   for r < outer, j < len.
// concat forward = one copy per part; its backward = narrow of dout per part (accumulated);
// narrow forward = one copy; its backward = the copy back into the gradient band (accumulated).
// Variants: copy_band_v1 — grid-stride over outer·len elements (coalesced along j), production.
// Memory-bound; at the sizes the memory model uses (B·m·C ≈ 100k floats) launch cost dominates.
#include "common.cuh"

extern "C" __global__ void copy_band_v1(float* dst, const float* src, long long outer, int dst_cols, int dst_off,
                                        int src_cols, int src_off, int len, int acc) {
    GRID_STRIDE(i, outer * len) {
        const long long r = i / len;
        const int j = (int)(i % len);
        const float v = src[r * src_cols + src_off + j];
        float* d = dst + r * dst_cols + dst_off + j;
        *d = acc ? *d + v : v;
    }
}

// Fused AdamW step (decoupled weight decay, bias correction), the same arithmetic as the CPU
// reference in src/optim/adamw.rs, one pass over w, g, m, v:
//   w ← w·decay;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²;  w ← w − step_size·m / (√v/√(1−β2ᵗ) + eps)
// Variants: adamw_step_v1 — grid-stride, production. Timings: benches/RESULTS.md.
#include "common.cuh"

extern "C" __global__ void adamw_step_v1(float* w, const float* g, float* m, float* v, float decay,
                                         float one_minus_b1, float b2, float one_minus_b2, float eps,
                                         float step_size, float bc2_sqrt, long long n) {
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        float wi = w[i] * decay;
        const float mi = m[i] + one_minus_b1 * (gi - m[i]);
        const float vi = v[i] * b2 + one_minus_b2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        wi -= step_size * mi / denom;
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
    }
}

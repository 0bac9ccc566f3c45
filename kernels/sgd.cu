// SGD with momentum, the same arithmetic as the CPU reference in src/optim/sgd.rs (torch.optim.SGD):
//   d = g + wd·w;  buf ← d (first step) or μ·buf + (1 − dampening)·d;  d ← d + μ·buf (Nesterov) or buf;
//   w ← w − lr·d.  With μ = 0 the buffer is neither read nor written.
// Variants: sgd_step_v1 — grid-stride, one pass over w, g, buf; production.
#include "common.cuh"

extern "C" __global__ void sgd_step_v1(float* w, const float* g, float* buf, float lr, float wd, float mu, float one_minus_damp,
                                       int nesterov, int first, long long n) {
    GRID_STRIDE(i, n) {
        float d = g[i];
        if (wd != 0.f) d += wd * w[i];
        if (mu != 0.f) {
            const float b = first ? d : mu * buf[i] + one_minus_damp * d;
            buf[i] = b;
            d = nesterov ? d + mu * b : b;
        }
        w[i] -= lr * d;
    }
}

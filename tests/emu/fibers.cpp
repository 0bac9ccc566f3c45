// The fiber engine of the CUDA emulator itself (built with -DENGRAM_EMU_FIBERS; the emulated
// device runs on it). tests/kernels_emulated.rs runs this with ENGRAM_EMU_ORDER unset and
// =reverse and checks what each order must catch:
//   - a thread reading its upper neighbour's shared slot without a barrier reads a stale value in
//     index order (the neighbour has not run yet), and its lower neighbour's in reverse order;
//     with the barrier both are right in both orders;
//   - warp shuffles (warp_sum), block reductions and atomics across parallel blocks are right;
//   - `fibers deadlock`: threads waiting at barriers that can never release stop with a message.
#include "common.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

__global__ void neighbour(float* out, float base, int shift, int sync) {
    __shared__ float s[256];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = base + t;
    if (sync) __syncthreads();
    out[t] = s[(t + shift + n) % n];
}

__global__ void sums(float* warp_out, float* block_out, float* total) {
    const float v = (float)threadIdx.x;
    const float w = warp_sum(v);
    const float b = block_sum(v);
    if ((threadIdx.x & 31) == 0) warp_out[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = w;
    if (threadIdx.x == 0) block_out[blockIdx.x] = b;
    atomicAdd(total, 1.f);
}

// Half of each warp at a warp barrier the other half never reaches (it waits at the block
// barrier): a hang on a GPU. (Threads that exit do not hold up a barrier, as on a GPU.)
__global__ void divergent() {
    if ((threadIdx.x & 31) < 16)
        __syncwarp();
    else
        __syncthreads();
}

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "deadlock") == 0) {
        emu::launch(dim3(1), dim3(64), [&] { divergent(); });
        std::printf("divergent barrier: returned\n");
        return 0;
    }
    const bool reverse = emu::reverse_order();
    int failures = 0;
    auto check = [&](const char* what, bool ok) {
        std::printf("%-52s %s\n", what, ok ? "ok" : "FAILED");
        failures += !ok;
    };
    const int n = 256;
    std::vector<float> out(n);
    float base = 1000.f;
    auto right = [&](int shift) {  // the threads whose neighbour does not wrap around
        for (int t = 1; t + 1 < n; ++t)
            if (out[t] != base + (float)(t + shift)) return false;
        return true;
    };
    for (int shift : {1, -1}) {
        for (int sync : {0, 1}) {
            base += 1000.f;  // a value no earlier launch left in the shared slots
            emu::launch(dim3(1), dim3(n), [&] { neighbour(out.data(), base, shift, sync); });
            const bool ok = right(shift);
            // Without the barrier the read is stale exactly when the neighbour runs later.
            const bool expect_ok = sync || (shift == 1 ? reverse : !reverse);
            char what[96];
            std::snprintf(what, sizeof what, "%s neighbour, %s barrier, %s order: %s", shift == 1 ? "upper" : "lower",
                          sync ? "with" : "no", reverse ? "reverse" : "index", ok ? "right" : "stale");
            check(what, ok == expect_ok);
        }
    }
    const int blocks = 64, threads = 256;
    std::vector<float> warp_out(blocks * threads / 32), block_out(blocks);
    float total = 0.f;
    emu::launch(dim3(blocks), dim3(threads), [&] { sums(warp_out.data(), block_out.data(), &total); });
    bool wok = true, bok = true;
    for (int b = 0; b < blocks; ++b) {
        bok = bok && block_out[b] == (float)(threads * (threads - 1) / 2);
        for (int w = 0; w < threads / 32; ++w) wok = wok && warp_out[b * threads / 32 + w] == (float)(32 * 32 * w + 31 * 32 / 2);
    }
    check("warp sums (shuffles) in 64 parallel blocks", wok);
    check("block sums (shared memory, barriers)", bok);
    check("atomicAdd across blocks", total == (float)(blocks * threads));
    return failures ? 1 : 0;
}

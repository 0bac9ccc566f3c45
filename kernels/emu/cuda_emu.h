// A CPU emulation of the CUDA execution model, for testing engram's kernels' logic on machines
// with no GPU and no CUDA toolkit (CI, and sessions without a device). A kernel source file is
// compiled by the host C++ compiler with this header included first (g++ -std=c++20 -include):
//
//   - every block's threads run as real OS threads, concurrently; blocks run one after another;
//   - __syncthreads() is a barrier over the block's threads;
//   - __shared__ variables are function statics: one copy, shared by the block's threads (blocks
//     are sequential, so no two blocks ever see each other's shared memory while running);
//   - warp shuffles exchange through per-warp slots between two barriers of the warp's 32 threads,
//     so a kernel that relies on implicit warp lock-step (no __syncwarp) fails here, as it may on
//     a Volta-or-later GPU;
//   - atomicAdd is a real atomic (std::atomic_ref).
//
// What it cannot show: performance, register/shared-memory limits, memory-model subtleties of
// real hardware beyond what concurrent threads and barriers expose. A kernel that passes here
// has correct indexing, bounds, synchronisation structure and arithmetic; it still needs a GPU
// run (tests/cuda.rs) before it goes into production.
//
// Usage (C++):  emu::launch(dim3(gx, gy, gz), dim3(bx), [&] { my_kernel(args...); });
//               emu::launch(grid, block, [&] { ... }, shared_mem_bytes);  // DYNAMIC_SHARED
#pragma once
#define ENGRAM_EMU 1  // kernels/common.cuh: DYNAMIC_SHARED takes the emulator's buffer

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {
inline thread_local uint3 tid{0, 0, 0};
inline thread_local uint3 bid{0, 0, 0};
inline dim3 gdim, bdim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
// One 8-byte slot per thread for shuffles (float, int or double).
inline std::vector<uint64_t> warp_slots;

// The launch's dynamic shared memory (DYNAMIC_SHARED), 16-byte aligned; filled with NaN bytes
// before every block, so a kernel that reads what it did not write sees garbage, as on a GPU.
inline std::vector<float4> dyn_smem;
inline void* dynamic_shared() { return dyn_smem.data(); }

inline unsigned linear_tid() { return tid.x + bdim.x * (tid.y + bdim.y * tid.z); }

template <class T>
T shfl(T v, int src_lane_fn(int lane, int arg), int arg) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const unsigned t = linear_tid(), w = t / 32, lane = t % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    warp_slots[t] = bits;
    warp_barriers[w]->arrive_and_wait();
    int src = src_lane_fn((int)lane, arg);
    if (src < 0 || src >= 32 || w * 32 + (unsigned)src >= warp_slots.size()) src = (int)lane;
    uint64_t got = warp_slots[w * 32 + (unsigned)src];
    warp_barriers[w]->arrive_and_wait();
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

// Run `body` (a kernel call) over the grid: each block's threads concurrently, blocks in order.
template <class F>
void launch(dim3 grid, dim3 block, F body, size_t shared_bytes = 0) {
    const unsigned nt = block.x * block.y * block.z;
    dyn_smem.assign((shared_bytes + 15) / 16, float4{NAN, NAN, NAN, NAN});
    gdim = grid;
    bdim = block;
    std::barrier<> bar((std::ptrdiff_t)nt);
    block_barrier = &bar;
    warp_barriers.clear();
    for (unsigned w = 0; w * 32 < nt; ++w) {
        const unsigned n = (nt - w * 32) < 32 ? (nt - w * 32) : 32;
        warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)n));
    }
    warp_slots.assign(nt, 0);
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned t = 0; t < nt; ++t) {
        threads.emplace_back([&, t] {
            tid = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        bid = uint3{bx, by, bz};
                        if (t == 0) std::fill(dyn_smem.begin(), dyn_smem.end(), float4{NAN, NAN, NAN, NAN});
                        bar.arrive_and_wait();
                        body();
                        bar.arrive_and_wait();  // the next block may reuse the shared statics
                    }
        });
    }
    for (auto& th : threads) th.join();
    block_barrier = nullptr;
}
// A launch through the emulated driver (kernels/emu/driver.cpp): cuLaunchKernel's argument
// array (one pointer per parameter, as the CUDA driver API takes it) unpacked into the kernel's
// parameter types. `dims` = grid x y z, block x y z, dynamic shared bytes.
template <class... A, size_t... I>
void call_packed(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <class... A>
void launch_packed(void (*k)(A...), const unsigned* dims, void** params) {
    launch(dim3(dims[0], dims[1], dims[2]), dim3(dims[3], dims[4], dims[5]),
           [&] { call_packed(k, params, std::index_sequence_for<A...>{}); }, dims[6]);
}
}  // namespace emu

// One exported launcher per kernel, with its __launch_bounds__ thread limit, looked up by
// cuModuleGetFunction in the emulated driver (build.rs writes one line per kernel).
#define ENGRAM_EMU_KERNEL(k, max_threads)                          \
    extern "C" const unsigned engram_emu_max_threads_##k = max_threads; \
    extern "C" void engram_emu_launch_##k(const unsigned* dims, void** params) { emu::launch_packed(k, dims, params); }

#define threadIdx emu::tid
#define blockIdx emu::bid
#define blockDim emu::bdim
#define gridDim emu::gdim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barriers[emu::linear_tid() / 32]->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu::shfl(v, [](int lane, int m) { return lane ^ m; }, mask);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, int d) {
    return emu::shfl(v, [](int lane, int dd) { return lane + dd; }, d);
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
    return emu::shfl(v, [](int, int s) { return s; }, src);
}

inline float atomicAdd(float* a, float v) { return std::atomic_ref<float>(*a).fetch_add(v); }
inline double atomicAdd(double* a, double v) { return std::atomic_ref<double>(*a).fetch_add(v); }
inline int atomicAdd(int* a, int v) { return std::atomic_ref<int>(*a).fetch_add(v); }

inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T>
inline T __ldg(const T* p) { return *p; }

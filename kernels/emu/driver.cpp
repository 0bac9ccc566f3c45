// The CUDA driver API emulated on the CPU: the subset engram's CUDA backend calls through cudarc,
// built by build.rs (`--features cuda-emu`) as a shared library whose soname is `libcuda.so`, so
// that the whole `--device cuda` path — the Rust launch code, buffer sizes, argument lists and
// launch configurations, the trainer — runs on machines with no GPU (CI included). Each kernel
// module is the matching kernels/*.cu compiled by the host C++ compiler with cuda_emu.h (one
// shared object per module, named in the module image); cuLaunchKernel runs the kernel there.
//
// It checks what a GPU would refuse or fault on, and says which kernel did it:
//   - every allocation ends at a guard page (PROT_NONE; with ENGRAM_EMU_GUARD=front it starts
//     after one instead) and starts filled with NaN bytes, so a kernel that reads or writes past
//     a buffer's end (beyond its rounding to 16 bytes; before its start) stops the process with
//     the kernel's name, and a kernel that reads what nobody wrote reads NaN;
//   - a write past the end that stays within the 16-byte rounding (no fault) changes the NaN bytes
//     there: checked after every launch, the same stop with the kernel's name;
//   - copies and memsets must lie inside one live allocation;
//   - launch configurations must satisfy the device limits (block ≤ 1024 threads and the
//     kernel's __launch_bounds__, grid sizes, dynamic shared memory ≤ 48 KiB unless the kernel's
//     limit was raised, at most 227 KiB);
//   - freeing an unknown pointer is an error.
// Launches run one at a time and complete before cuLaunchKernel returns (one in-order stream).
// Device limits are an H100's (sm_90, 132 SMs); memory is the host's.
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;

namespace {

enum : CUresult {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_SUPPORTED = 801,
};

constexpr int kSms = 132, kMajor = 9, kMinor = 0;
constexpr unsigned kDefaultSmem = 48 * 1024, kMaxSmem = 227 * 1024;
constexpr unsigned long long kTotalMem = 80ull << 30;

struct Module {
    void* handle;
    std::string path;
};
struct Function {
    void (*launch)(const unsigned*, void**);
    unsigned max_threads;
    unsigned max_dynamic_smem;
    std::string name;
};

// Live allocations: user pointer → (mapping base, mapping length, bytes asked).
struct Alloc {
    char* base;
    size_t map_len;
    size_t bytes;
};
std::mutex mem_mu;
std::map<uintptr_t, Alloc> allocs;
unsigned long long used = 0;

std::mutex launch_mu;
std::atomic<const char*> running{nullptr};
struct sigaction previous_segv;

int ctx_token;

size_t page() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

// The allocation holding [p, p + n), or nullptr.
const Alloc* find(uintptr_t p, size_t n) {
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return nullptr;
    --it;
    const uintptr_t start = it->first;
    if (p < start || p + n > start + it->second.bytes) return nullptr;
    return &it->second;
}

bool valid_range(CUdeviceptr p, size_t n) {
    std::lock_guard<std::mutex> g(mem_mu);
    return n == 0 || find((uintptr_t)p, n) != nullptr;
}

void on_segv(int sig, siginfo_t* info, void* uctx) {
    const char* k = running.load();
    if (k == nullptr) {  // not ours: let the previous handler (or the default) see it again
        sigaction(SIGSEGV, &previous_segv, nullptr);
        return;
    }
    const uintptr_t a = (uintptr_t)info->si_addr;
    char msg[512];
    int n = std::snprintf(msg, sizeof msg, "\nengram CUDA emulator: kernel %s accessed address %#lx outside device memory", k,
                          (unsigned long)a);
    // Which buffer it overran (best effort: the map is not locked in a signal handler).
    for (const auto& [start, al] : allocs) {
        if (a >= start + al.bytes && a < (uintptr_t)al.base + al.map_len) {
            n += std::snprintf(msg + n, sizeof msg - (size_t)n, " (%lu bytes past the end of a %zu-byte buffer)",
                               (unsigned long)(a - start - al.bytes), al.bytes);
            break;
        }
        if (a < start && a >= (uintptr_t)al.base) {
            n += std::snprintf(msg + n, sizeof msg - (size_t)n, " (%lu bytes before the start of a %zu-byte buffer)",
                               (unsigned long)(start - a), al.bytes);
            break;
        }
    }
    std::snprintf(msg + n, sizeof msg - (size_t)n, " — an illegal memory access on a GPU\n");
    if (write(2, msg, std::strlen(msg)) < 0) {
    }
    (void)sig;
    (void)uctx;
    signal(SIGABRT, SIG_DFL);
    std::abort();
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
    });
}

// ENGRAM_EMU_GUARD=front puts the guard page before each buffer (reads before its start fault)
// instead of after it (reads past its end fault, the default).
bool guard_front() {
    static const bool front = [] {
        const char* v = std::getenv("ENGRAM_EMU_GUARD");
        return v != nullptr && std::strcmp(v, "front") == 0;
    }();
    return front;
}

// A buffer's bytes between its end and the 16-byte rounding before the guard page stay 0xFF (NaN)
// unless a kernel writes past the end by less than the rounding: checked after every launch.
void check_slack(const char* kernel) {
    std::lock_guard<std::mutex> g(mem_mu);
    for (const auto& [start, al] : allocs) {
        const size_t rounded = (al.bytes + 15) & ~(size_t)15;
        const unsigned char* p = (const unsigned char*)start;
        for (size_t i = al.bytes; i < rounded; ++i) {
            if (p[i] != 0xFF) {
                std::fprintf(stderr,
                             "\nengram CUDA emulator: kernel %s wrote past the end of a %zu-byte buffer (at byte %zu) — an "
                             "out-of-bounds write on a GPU\n",
                             kernel, al.bytes, i);
                std::abort();
            }
        }
    }
}

CUresult alloc(CUdeviceptr* out, size_t bytes) {
    if (out == nullptr) return INVALID_VALUE;
    if (bytes == 0) return INVALID_VALUE;  // as cuMemAlloc
    const size_t rounded = (bytes + 15) & ~(size_t)15;
    const size_t data = (rounded + page() - 1) / page() * page();
    const size_t map_len = data + page();
    std::lock_guard<std::mutex> g(mem_mu);
    if (used + bytes > kTotalMem) return OUT_OF_MEMORY;
    void* base = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    const bool front = guard_front();
    if (mprotect(front ? base : (char*)base + data, page(), PROT_NONE) != 0) {
        munmap(base, map_len);
        return OUT_OF_MEMORY;
    }
    // Ends at the guard page (16-byte aligned), or starts right after it.
    char* p = front ? (char*)base + page() : (char*)base + data - rounded;
    std::memset(p, 0xFF, rounded);           // NaN bytes: device memory is not zeroed
    allocs[(uintptr_t)p] = Alloc{(char*)base, map_len, bytes};
    used += bytes;
    *out = (CUdeviceptr)(uintptr_t)p;
    return OK;
}

CUresult release(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(mem_mu);
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end()) {
        std::fprintf(stderr, "engram CUDA emulator: free of %#llx, which is not a live allocation\n", p);
        return INVALID_VALUE;
    }
    used -= it->second.bytes;
    munmap(it->second.base, it->second.map_len);
    allocs.erase(it);
    return OK;
}

CUresult copy(void* dst, const void* src, size_t n, bool dst_dev, bool src_dev) {
    if (n == 0) return OK;
    if ((dst_dev && !valid_range((CUdeviceptr)(uintptr_t)dst, n)) || (src_dev && !valid_range((CUdeviceptr)(uintptr_t)src, n))) {
        std::fprintf(stderr, "engram CUDA emulator: a copy of %zu bytes falls outside its device allocation\n", n);
        return INVALID_VALUE;
    }
    std::memmove(dst, src, n);
    return OK;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) {
    if (v == nullptr) return INVALID_VALUE;
    *v = 13000;
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    if (n == nullptr) return INVALID_VALUE;
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (d == nullptr) return INVALID_VALUE;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (name == nullptr || len <= 0) return INVALID_VALUE;
    std::snprintf(name, (size_t)len, "engram CUDA emulator (CPU; H100 limits)");
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (v == nullptr) return INVALID_VALUE;
    switch (attr) {
        case 1: *v = 1024; break;                 // max threads per block
        case 2: case 3: *v = 1024; break;         // max block x, y
        case 4: *v = 64; break;                   // max block z
        case 5: *v = 2147483647; break;           // max grid x
        case 6: case 7: *v = 65535; break;        // max grid y, z
        case 8: *v = (int)kDefaultSmem; break;    // shared memory per block
        case 10: *v = 32; break;                  // warp size
        case 16: *v = kSms; break;                // multiprocessors
        case 75: *v = kMajor; break;
        case 76: *v = kMinor; break;
        case 97: *v = (int)kMaxSmem; break;       // opt-in shared memory per block
        case 115: *v = 1; break;                  // memory pools
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    if (b == nullptr) return INVALID_VALUE;
    *b = (size_t)kTotalMem;
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (c == nullptr) return INVALID_VALUE;
    *c = &ctx_token;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
CUresult cuCtxSetCurrent(CUcontext) { return OK; }
CUresult cuCtxGetCurrent(CUcontext* c) {
    if (c == nullptr) return INVALID_VALUE;
    *c = &ctx_token;
    return OK;
}
CUresult cuCtxGetDevice(CUdevice* d) {
    if (d == nullptr) return INVALID_VALUE;
    *d = 0;
    return OK;
}
CUresult cuCtxSynchronize() { return OK; }
CUresult cuStreamSynchronize(CUstream) { return OK; }

CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    std::lock_guard<std::mutex> g(mem_mu);
    if (free_b) *free_b = (size_t)(kTotalMem - used);
    if (total) *total = (size_t)kTotalMem;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) { return alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release(p); }

CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    if (!valid_range(p, n)) return INVALID_VALUE;
    std::memset((void*)(uintptr_t)p, v, n);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) {
    if (!valid_range(p, n * 4)) return INVALID_VALUE;
    unsigned* d = (unsigned*)(uintptr_t)p;
    for (size_t i = 0; i < n; ++i) d[i] = v;
    return OK;
}
CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, CUstream) { return cuMemsetD32_v2(p, v, n); }

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*)(uintptr_t)d, h, n, true, false); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream) { return cuMemcpyHtoD_v2(d, h, n); }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (const void*)(uintptr_t)d, n, false, true); }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, CUstream) { return cuMemcpyDtoH_v2(h, d, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
    return copy((void*)(uintptr_t)d, (const void*)(uintptr_t)s, n, true, true);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) { return cuMemcpyDtoD_v2(d, s, n); }

// The module image is "ENGRAM-EMU-MODULE:<path of the emulated module's shared object>\0".
CUresult cuModuleLoadData(Module** out, const void* image) {
    static const char magic[] = "ENGRAM-EMU-MODULE:";
    if (out == nullptr || image == nullptr) return INVALID_VALUE;
    const char* s = (const char*)image;
    if (std::strncmp(s, magic, sizeof magic - 1) != 0) {
        std::fprintf(stderr, "engram CUDA emulator: a module image that is not an emulated module (a real fatbin?)\n");
        return INVALID_IMAGE;
    }
    const char* path = s + sizeof magic - 1;
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
        std::fprintf(stderr, "engram CUDA emulator: cannot load %s: %s\n", path, dlerror());
        return INVALID_IMAGE;
    }
    *out = new Module{h, path};
    return OK;
}
CUresult cuModuleUnload(Module* m) {
    if (m == nullptr) return INVALID_HANDLE;
    delete m;  // the shared object stays loaded: functions taken from it may still be held
    return OK;
}
CUresult cuModuleGetFunction(Function** out, Module* m, const char* name) {
    if (out == nullptr || m == nullptr || name == nullptr) return INVALID_VALUE;
    const std::string launcher = std::string("engram_emu_launch_") + name;
    const std::string bounds = std::string("engram_emu_max_threads_") + name;
    void* f = dlsym(m->handle, launcher.c_str());
    const unsigned* b = (const unsigned*)dlsym(m->handle, bounds.c_str());
    if (f == nullptr || b == nullptr) return NOT_FOUND;
    *out = new Function{(void (*)(const unsigned*, void**))f, *b, kDefaultSmem, name};
    return OK;
}
// CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CUresult cuFuncGetAttribute(int* v, int attr, Function* f) {
    if (v == nullptr || f == nullptr) return INVALID_VALUE;
    if (attr == 0) *v = (int)f->max_threads;
    else if (attr == 8) *v = (int)f->max_dynamic_smem;
    else *v = 0;
    return OK;
}
CUresult cuFuncSetAttribute(Function* f, int attr, int v) {
    if (f == nullptr) return INVALID_HANDLE;
    if (attr != 8) return NOT_SUPPORTED;
    if (v < 0 || (unsigned)v > kMaxSmem) return INVALID_VALUE;
    f->max_dynamic_smem = (unsigned)v;
    return OK;
}

CUresult cuLaunchKernel(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                        CUstream, void** params, void** extra) {
    if (f == nullptr) return INVALID_HANDLE;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    const char* why = nullptr;
    if (extra != nullptr) why = "the `extra` argument form is not emulated";
    else if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) why = "a zero grid or block dimension";
    else if (gx > 2147483647u || gy > 65535 || gz > 65535) why = "a grid dimension over the device limit";
    else if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) why = "a block of more than 1024 threads";
    else if (threads > f->max_threads) why = "more threads per block than the kernel's __launch_bounds__";
    else if (smem > f->max_dynamic_smem) why = "more dynamic shared memory than the kernel's limit";
    if (why != nullptr) {
        std::fprintf(stderr,
                     "engram CUDA emulator: launch of %s refused: %s (grid %u×%u×%u, block %u×%u×%u, %u bytes dynamic "
                     "shared memory; kernel limits %u threads, %u bytes)\n",
                     f->name.c_str(), why, gx, gy, gz, bx, by, bz, smem, f->max_threads, f->max_dynamic_smem);
        return INVALID_VALUE;
    }
    install_fault_handler();
    std::lock_guard<std::mutex> g(launch_mu);
    const unsigned dims[7] = {gx, gy, gz, bx, by, bz, smem};
    running.store(f->name.c_str());
    f->launch(dims, params);
    running.store(nullptr);
    check_slack(f->name.c_str());
    return OK;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    if (s == nullptr) return INVALID_VALUE;
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return OK;
}
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

}  // extern "C"

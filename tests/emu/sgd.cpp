// kernels/sgd.cu on the CPU emulator: `steps` SGD steps launched as src/optim/sgd.rs launches them
// (cfg_1d: 256 threads, ⌈n/256⌉ blocks; momentum buffer zeroed, `first` on the first step).
// tests/kernels_emulated.rs compares the weights with engram's CPU optimizer.
//
//   sgd DIR   reads DIR/cfg.txt ("n steps lr wd momentum dampening nesterov"), DIR/w, DIR/g0…,
//             writes DIR/w_out
#include "../../kernels/sgd.cu"

#include "io.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>


int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string dir = argv[1];
    long long n;
    int steps, nesterov;
    double lr, wd, mu, damp;
    std::ifstream cfg(dir + "/cfg.txt");
    if (!(cfg >> n >> steps >> lr >> wd >> mu >> damp >> nesterov)) return 2;
    auto w = load(dir + "/w", (size_t)n);
    std::vector<float> buf((size_t)n, 0.f);
    // The same f64 → f32 constants as the launch code.
    const float lrf = (float)lr, wdf = (float)wd, muf = (float)mu, dampf = (float)(1.0 - damp);
    const unsigned blocks = (unsigned)std::min<long long>((n + 255) / 256, 65535LL * 16);
    for (int t = 0; t < steps; ++t) {
        auto g = load(dir + "/g" + std::to_string(t), (size_t)n);
        emu::launch(dim3(blocks), dim3(256), [&] { sgd_step_v1(w.data(), g.data(), buf.data(), lrf, wdf, muf, dampf, nesterov, t == 0, n); });
    }
    std::ofstream o(dir + "/w_out", std::ios::binary);
    o.write(reinterpret_cast<const char*>(w.data()), (std::streamsize)(w.size() * sizeof(float)));
    std::printf("sgd n %lld steps %d mu %g damp %g nesterov %d wd %g: done\n", n, steps, mu, damp, nesterov, wd);
    return 0;
}

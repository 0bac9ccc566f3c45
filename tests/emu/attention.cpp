// kernels/attention.cu on the CPU emulator: forward and both backward kernels, launched exactly as
// src/ops/attention.rs launches them (grid (rows, B·NH), 128 threads, shared memory = the Tk
// scores and one HS row in whole float4s; outputs poisoned with NaN, gradients zeroed).
// tests/kernels_emulated.rs writes the inputs into DIR and compares what this writes back with
// engram's CPU attention (dropout on, padding mask, random upstream gradient).
//
//   attention DIR [v1|v2]   reads DIR/{dims.txt, q, k, v, mask, dout}, writes DIR/{out, dq, dk, dv}
#include "../../kernels/attention.cu"

#include "io.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>



int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: attention DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    int B, NH, Tq, Tk, HS, use_mask;
    float scale, p;
    unsigned long long seed;
    {
        std::ifstream f(dir + "/dims.txt");
        if (!(f >> B >> NH >> Tq >> Tk >> HS >> scale >> seed >> p >> use_mask)) {
            std::fprintf(stderr, "bad %s/dims.txt\n", dir.c_str());
            return 2;
        }
    }
    const float inv = p > 0.f ? (float)(1.0 / (1.0 - (double)p)) : 1.f;
    const size_t nq = (size_t)B * NH * Tq * HS, nk = (size_t)B * NH * Tk * HS, np = (size_t)B * NH * Tq * Tk;
    auto q = load<float>(dir + "/q", nq), k = load<float>(dir + "/k", nk), v = load<float>(dir + "/v", nk);
    auto dout = load<float>(dir + "/dout", nq);
    std::vector<long long> mask;
    if (use_mask) mask = load<long long>(dir + "/mask", (size_t)B * Tk);
    std::vector<float> out(nq, NAN), probs(np, NAN), ds(np, NAN), dq(nq, 0.f), dk(nk, 0.f), dv(nk, 0.f);
    const std::string variant = argc > 2 ? argv[2] : "v1";
    const long long* mk = use_mask ? mask.data() : nullptr;
    if (variant == "v2") {
        // As src/ops/attention.rs launches v2: row tiles of 32, 128 threads, shared memory by HS.
        const size_t hp = (HS + 3) / 4 * 4 + 4, R = 32, T = 32;
        const size_t fwd = (R * hp + 2 * T * hp + R * (T + 4) + T) * 4, bq = (2 * R * hp + 2 * T * hp + R * (T + 4) + T) * 4;
        const size_t bkv = (2 * R * hp + 2 * T * hp + 2 * R * (T + 4) + 2 * T) * 4;
        std::vector<float> lse((size_t)B * NH * Tq, NAN), dd((size_t)B * NH * Tq, NAN);
        const dim3 block(128);
        const unsigned bhs = (unsigned)(B * NH);
        emu::launch(dim3((Tq + 31) / 32, bhs), block, [&] {
            attention_fwd_v2(out.data(), lse.data(), q.data(), k.data(), v.data(), mk, B, NH, Tq, Tk, HS, scale, seed, p, inv);
        }, fwd);
        const long long rows = (long long)B * NH * Tq;
        emu::launch(dim3((unsigned)((rows + 255) / 256)), dim3(256), [&] { attention_bwd_d_v2(dd.data(), dout.data(), out.data(), rows, HS); });
        emu::launch(dim3((Tq + 31) / 32, bhs), block, [&] {
            attention_bwd_q_v2(dq.data(), dout.data(), lse.data(), dd.data(), q.data(), k.data(), v.data(), mk, B, NH, Tq, Tk, HS, scale,
                               seed, p, inv);
        }, bq);
        emu::launch(dim3((Tk + 31) / 32, bhs), block, [&] {
            attention_bwd_kv_v2(dk.data(), dv.data(), dout.data(), lse.data(), dd.data(), q.data(), k.data(), v.data(), mk, B, NH, Tq,
                                Tk, HS, scale, seed, p, inv);
        }, bkv);
        save(dir + "/out", out);
        save(dir + "/dq", dq);
        save(dir + "/dk", dk);
        save(dir + "/dv", dv);
        std::printf("attention v2 B %d NH %d Tq %d Tk %d HS %d p %g mask %d: ran fwd, bwd_d, bwd_q, bwd_kv\n", B, NH, Tq, Tk, HS, p, use_mask);
        return 0;
    }
    auto smem = [](int tk, int hs) { return (size_t)(((tk + 3) / 4) + ((hs + 3) / 4)) * 16; };
    const dim3 block(128);
    emu::launch(dim3(Tq, B * NH), block, [&] {
        attention_fwd_v1(out.data(), probs.data(), q.data(), k.data(), v.data(), use_mask ? mask.data() : nullptr, B, NH, Tq, Tk, HS,
                         scale, seed, p, inv);
    }, smem(Tk, HS));
    emu::launch(dim3(Tq, B * NH), block, [&] {
        attention_bwd_q_v1(dq.data(), ds.data(), dout.data(), probs.data(), k.data(), v.data(), B, NH, Tq, Tk, HS, scale, seed, p, inv);
    }, smem(Tk, HS));
    emu::launch(dim3(Tk, B * NH), block, [&] {
        attention_bwd_kv_v1(dk.data(), dv.data(), ds.data(), probs.data(), q.data(), dout.data(), B, NH, Tq, Tk, HS, scale, seed, p, inv);
    }, 0);
    save(dir + "/out", out);
    save(dir + "/dq", dq);
    save(dir + "/dk", dk);
    save(dir + "/dv", dv);
    std::printf("attention B %d NH %d Tq %d Tk %d HS %d p %g mask %d: ran fwd, bwd_q, bwd_kv\n", B, NH, Tq, Tk, HS, p, use_mask);
    return 0;
}

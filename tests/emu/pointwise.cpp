// kernels/dropout.cu and kernels/adamw.cu on the CPU emulator, launched as src/ops/dropout.rs and
// src/optim/adamw.rs launch them (cfg_1d: 256 threads, ⌈n/256⌉ blocks). tests/kernels_emulated.rs
// compares with engram's CPU dropout (forward and backward) and CPU AdamW.
//
//   pointwise DIR dropout   DIR/cfg.txt "n seed p", DIR/x, DIR/dy   → DIR/y, DIR/dx
//   pointwise DIR adamw     DIR/cfg.txt "n steps lr wd beta1 beta2 eps", DIR/w, DIR/g0… → DIR/w_out
//   pointwise DIR layer_norm  DIR/cfg.txt "rows c eps", DIR/{x, w, b, dy} → DIR/{y, dx, dw, db}
//                             (cfg_rows(rows, 256) for the row kernels, cfg_1d(c) for dw/db)
//   pointwise DIR softmax     DIR/cfg.txt "rows c", DIR/{x, dy} → DIR/{y, dx}
//   pointwise DIR cross_entropy  DIR/cfg.txt "rows v eps", DIR/{x, t (i64)} → DIR/{loss, dx} (dloss = 1;
//                             the reduce kernel runs as one block of 1024 threads)
//   pointwise DIR cross_entropy_weighted  as cross_entropy, with DIR/w (v class weights)
//   pointwise DIR gelu | gelu_tanh  DIR/cfg.txt "n", DIR/{x, dy} → DIR/{y, dx}
//   pointwise DIR embedding   DIR/cfg.txt "n c v padding_idx|-1", DIR/{ids (i64), table, dy} → DIR/{y, dtable}
//                             (atomicAdd into rows that several ids share)
//   pointwise DIR mean_pool   DIR/cfg.txt "B T C", DIR/{x, mask (i64), dy} → DIR/{y, dx}
//   pointwise DIR sum_squares DIR/cfg.txt "n", DIR/x → DIR/ss (f64 as two floats: hi, lo)
//   pointwise DIR bce_pos_weight  DIR/cfg.txt "n c", DIR/{x, y, pw} → DIR/{loss, dx} (dloss = 1)
#include "../../kernels/dropout.cu"
#include "../../kernels/adamw.cu"
#include "../../kernels/layer_norm.cu"
#include "../../kernels/softmax.cu"
#include "../../kernels/cross_entropy.cu"
#include "../../kernels/gelu.cu"
#include "../../kernels/embedding.cu"
#include "../../kernels/pooling.cu"
#include "../../kernels/elementwise.cu"
#include "../../kernels/elementwise_loss.cu"

#include <cmath>
#include "io.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

static unsigned blocks(long long n) { return (unsigned)std::min<long long>((n + 255) / 256, 65535LL * 16); }

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    const std::string dir = argv[1], what = argv[2];
    std::ifstream cfg(dir + "/cfg.txt");
    if (what == "dropout") {
        long long n;
        unsigned long long seed;
        double p;
        if (!(cfg >> n >> seed >> p)) return 2;
        auto x = load(dir + "/x", n), dy = load(dir + "/dy", n);
        std::vector<float> y(n, NAN), dx(n, 0.f);
        const float pf = (float)p, inv = (float)(1.0 / (1.0 - p));
        emu::launch(dim3(blocks(n)), dim3(256), [&] { dropout_fwd_v1(y.data(), x.data(), seed, pf, inv, n); });
        emu::launch(dim3(blocks(n)), dim3(256), [&] { dropout_bwd_v1(dx.data(), dy.data(), seed, pf, inv, n); });
        save(dir + "/y", y);
        save(dir + "/dx", dx);
    } else if (what == "adamw") {
        long long n;
        int steps;
        double lr, wd, beta1, beta2, eps;
        if (!(cfg >> n >> steps >> lr >> wd >> beta1 >> beta2 >> eps)) return 2;
        auto w = load(dir + "/w", n);
        std::vector<float> m(n, 0.f), v(n, 0.f);
        for (int t = 1; t <= steps; ++t) {
            auto g = load(dir + "/g" + std::to_string(t - 1), n);
            // The launch code's f64 → f32 constants.
            const double step_size = lr / (1.0 - std::pow(beta1, t)), bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, t));
            const float decay = (float)(1.0 - lr * wd), omb1 = (float)(1.0 - beta1), b2 = (float)beta2, omb2 = (float)(1.0 - beta2);
            const float epsf = (float)eps, ss = (float)step_size, bc2 = (float)bc2_sqrt;
            emu::launch(dim3(blocks(n)), dim3(256), [&] {
                adamw_step_v1(w.data(), g.data(), m.data(), v.data(), decay, omb1, b2, omb2, epsf, ss, bc2, n);
            });
        }
        save(dir + "/w_out", w);
    } else if (what == "layer_norm") {
        long long rows;
        int c;
        float eps;
        if (!(cfg >> rows >> c >> eps)) return 2;
        auto x = load(dir + "/x", rows * c), w = load(dir + "/w", c), b = load(dir + "/b", c), dy = load(dir + "/dy", rows * c);
        std::vector<float> y(rows * c, NAN), mean(rows, NAN), rstd(rows, NAN), dx(rows * c, 0.f), dw(c, 0.f), db(c, 0.f);
        emu::launch(dim3((unsigned)rows), dim3(256), [&] { layer_norm_fwd_v1(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, c, eps); });
        emu::launch(dim3((unsigned)rows), dim3(256), [&] { layer_norm_bwd_dx_v1(dx.data(), dy.data(), x.data(), mean.data(), rstd.data(), w.data(), rows, c); });
        emu::launch(dim3(blocks(c)), dim3(256), [&] { layer_norm_bwd_dwdb_v1(dw.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(), rows, c); });
        save(dir + "/y", y);
        save(dir + "/dx", dx);
        save(dir + "/dw", dw);
        save(dir + "/db", db);
    } else if (what == "softmax") {
        long long rows;
        int c;
        if (!(cfg >> rows >> c)) return 2;
        auto x = load(dir + "/x", rows * c), dy = load(dir + "/dy", rows * c);
        std::vector<float> y(rows * c, NAN), dx(rows * c, 0.f);
        emu::launch(dim3((unsigned)rows), dim3(256), [&] { softmax_fwd_v1(y.data(), x.data(), rows, c); });
        emu::launch(dim3((unsigned)rows), dim3(256), [&] { softmax_bwd_v1(dx.data(), dy.data(), y.data(), rows, c); });
        save(dir + "/y", y);
        save(dir + "/dx", dx);
    } else if (what == "cross_entropy") {
        long long rows;
        int v;
        float eps;
        if (!(cfg >> rows >> v >> eps)) return 2;
        auto x = load(dir + "/x", rows * v);
        std::vector<long long> t(rows);
        std::ifstream tf(dir + "/t", std::ios::binary);
        if (!tf.read(reinterpret_cast<char*>(t.data()), (std::streamsize)(rows * 8))) return 2;
        std::vector<float> row_loss(rows, NAN), lse(rows, NAN), loss(1, NAN), count(1, NAN), dloss(1, 1.f), dx(rows * v, 0.f);
        emu::launch(dim3((unsigned)rows), dim3(256), [&] { cross_entropy_fwd_v1(row_loss.data(), lse.data(), x.data(), t.data(), rows, v, eps); });
        emu::launch(dim3(1), dim3(1024), [&] { cross_entropy_reduce_v1(loss.data(), count.data(), row_loss.data(), t.data(), rows); });
        emu::launch(dim3(blocks(rows * v)), dim3(256), [&] {
            cross_entropy_bwd_v1(dx.data(), dloss.data(), count.data(), lse.data(), x.data(), t.data(), rows, v, eps);
        });
        save(dir + "/loss", loss);
        save(dir + "/dx", dx);
    } else if (what == "cross_entropy_weighted") {
        long long rows;
        int v;
        float eps;
        if (!(cfg >> rows >> v >> eps)) return 2;
        auto x = load(dir + "/x", rows * v), w = load(dir + "/w", v);
        auto t = load<long long>(dir + "/t", rows);
        float wsum = 0.f;
        for (float wj : w) wsum += wj;
        std::vector<float> row_loss(rows, NAN), row_w(rows, NAN), lse(rows, NAN), loss(1, NAN), norm(1, NAN), dloss(1, 1.f),
            dx(rows * v, 0.f);
        emu::launch(dim3((unsigned)rows), dim3(256), [&] {
            cross_entropy_weighted_fwd_v1(row_loss.data(), row_w.data(), lse.data(), x.data(), t.data(), w.data(), rows, v, eps);
        });
        emu::launch(dim3(1), dim3(1024), [&] { cross_entropy_weighted_reduce_v1(loss.data(), norm.data(), row_loss.data(), row_w.data(), rows); });
        emu::launch(dim3(blocks(rows * v)), dim3(256), [&] {
            cross_entropy_weighted_bwd_v1(dx.data(), dloss.data(), norm.data(), lse.data(), x.data(), t.data(), w.data(), rows, v, eps, wsum);
        });
        save(dir + "/loss", loss);
        save(dir + "/dx", dx);
    } else if (what == "gelu" || what == "gelu_tanh") {
        long long n;
        if (!(cfg >> n)) return 2;
        auto x = load(dir + "/x", n), dy = load(dir + "/dy", n);
        std::vector<float> y(n, NAN), dx(n, 0.f);
        const bool t = what == "gelu_tanh";
        emu::launch(dim3(blocks(n)), dim3(256), [&] { t ? gelu_tanh_fwd_v1(y.data(), x.data(), n) : gelu_fwd_v1(y.data(), x.data(), n); });
        emu::launch(dim3(blocks(n)), dim3(256), [&] { t ? gelu_tanh_bwd_v1(dx.data(), dy.data(), x.data(), n) : gelu_bwd_v1(dx.data(), dy.data(), x.data(), n); });
        save(dir + "/y", y);
        save(dir + "/dx", dx);
    } else if (what == "embedding") {
        long long n, pad;
        int c, v;
        if (!(cfg >> n >> c >> v >> pad)) return 2;
        auto ids = load<long long>(dir + "/ids", n);
        auto table = load(dir + "/table", (size_t)v * c), dy = load(dir + "/dy", n * c);
        std::vector<float> y(n * c, NAN), dt((size_t)v * c, 0.f);
        emu::launch(dim3(blocks(n * c)), dim3(256), [&] { embedding_fwd_v1(y.data(), ids.data(), table.data(), n, c); });
        emu::launch(dim3(blocks(n * c)), dim3(256), [&] { embedding_bwd_v1(dt.data(), dy.data(), ids.data(), n, c, pad, pad >= 0); });
        save(dir + "/y", y);
        save(dir + "/dtable", dt);
    } else if (what == "mean_pool") {
        int B, T, C;
        if (!(cfg >> B >> T >> C)) return 2;
        auto x = load(dir + "/x", (size_t)B * T * C), dy = load(dir + "/dy", (size_t)B * C);
        auto mask = load<long long>(dir + "/mask", (size_t)B * T);
        std::vector<float> y((size_t)B * C, NAN), dx((size_t)B * T * C, 0.f);
        emu::launch(dim3(blocks((long long)B * C)), dim3(256), [&] { mean_pool_fwd_v1(y.data(), x.data(), mask.data(), B, T, C); });
        emu::launch(dim3(blocks((long long)B * T * C)), dim3(256), [&] { mean_pool_bwd_v1(dx.data(), dy.data(), mask.data(), B, T, C); });
        save(dir + "/y", y);
        save(dir + "/dx", dx);
    } else if (what == "sum_squares") {
        long long n;
        if (!(cfg >> n)) return 2;
        auto x = load(dir + "/x", n);
        double acc = 0.0;
        // cfg_1d(n).capped(1024): several blocks add their partial sums atomically.
        emu::launch(dim3(std::min(blocks(n), 1024u)), dim3(256), [&] { sum_squares_v1(&acc, x.data(), n); });
        const float hi = (float)acc, lo = (float)(acc - (double)hi);
        save(dir + "/ss", std::vector<float>{hi, lo});
    } else if (what == "bce_pos_weight") {
        long long n;
        int c;
        if (!(cfg >> n >> c)) return 2;
        auto x = load(dir + "/x", n), y = load(dir + "/y", n), pw = load(dir + "/pw", c);
        std::vector<float> loss(1, NAN), dloss(1, 1.f), dx(n, 0.f);
        emu::launch(dim3(1), dim3(1024), [&] { bce_with_logits_pw_fwd_v1(loss.data(), x.data(), y.data(), pw.data(), n, c); });
        emu::launch(dim3(blocks(n)), dim3(256), [&] { bce_with_logits_pw_bwd_v1(dx.data(), dloss.data(), x.data(), y.data(), pw.data(), n, c); });
        save(dir + "/loss", loss);
        save(dir + "/dx", dx);
    } else {
        return 2;
    }
    std::printf("pointwise %s: done\n", what.c_str());
    return 0;
}

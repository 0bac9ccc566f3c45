//! engram's CUDA kernels on the CPU: `kernels/emu/cuda_emu.h` emulates the CUDA execution model
//! (a block's threads as concurrent OS threads, `__syncthreads` as a barrier, shared memory,
//! warp shuffles), so a kernel's indexing, bounds, synchronisation structure and arithmetic are
//! checked against an f64 reference on machines with no GPU — CI included. Performance and
//! hardware limits still need a GPU run (tests/cuda.rs, benches/gpu.rs).
//!
//! Each harness in tests/emu/*.cpp includes one kernels/*.cu file; this test compiles it with the
//! host C++ compiler and runs it. The harness must also fail on a broken kernel: the same
//! harness is rebuilt against mutated copies of the kernel source and must then exit non-zero.

// `!(err <= tol)` on purpose: a NaN (an unwritten, poisoned output) must fail the comparison.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::path::{Path, PathBuf};
use std::process::Command;

use engram::optim::{AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};
use engram::util::Rng;
use engram::{ops, Tape, Tensor};

mod common;

use common::root;

/// Scratch space for the emulator builds and their data (the test binary may run on another
/// machine, from the repository root, so no build-time paths).
fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("engram-emu-{}", std::process::id()))
}

/// The host C++ compiler (`CXX`, else g++, else clang++); None (and the test says SKIPPED) when
/// there is none.
fn cxx() -> Option<String> {
    let candidates = std::env::var("CXX").into_iter().chain(["g++".to_string(), "clang++".to_string()]);
    let found = candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("SKIPPED: no C++ compiler (g++/clang++/CXX) to build the kernel emulator");
    }
    found
}

/// Compile `tests/emu/<harness>.cpp` found under `tree` (the repository, or a mutated copy of
/// its kernels); returns the executable.
fn build(cxx: &str, tree: &Path, harness: &str, tag: &str) -> PathBuf {
    let out_dir = scratch().join("bin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(format!("{harness}-{tag}"));
    let src = tree.join("tests/emu").join(format!("{harness}.cpp"));
    // With AddressSanitizer (out-of-bounds global reads and writes fail, as under
    // compute-sanitizer memcheck on a GPU) where the compiler has it, else without.
    let compile = |sanitize: bool| {
        let mut c = Command::new(cxx);
        c.args(["-std=c++20", "-pthread", "-g", "-fno-strict-aliasing"]);
        c.args(if sanitize { &["-O1", "-fsanitize=address"][..] } else { &["-O2"][..] });
        c.arg("-include").arg(tree.join("kernels/emu/cuda_emu.h")).arg("-I").arg(tree.join("kernels")).arg(&src).arg("-o").arg(&exe);
        c.output().expect("run the C++ compiler")
    };
    let mut out = compile(true);
    if !out.status.success() {
        eprintln!("note: building {harness} without AddressSanitizer ({cxx} could not link it)");
        out = compile(false);
    }
    assert!(out.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&out.stderr));
    exe
}

/// Run an emulated-kernel executable; returns (success, stdout + stderr).
fn run(exe: &Path, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(exe).args(args).output().expect("run the emulated kernel test");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn build_and_run(cxx: &str, tree: &Path, harness: &str, tag: &str) -> (bool, String) {
    run(&build(cxx, tree, harness, tag), &[])
}

/// A copy of the kernel sources and harnesses with `file`'s `from` replaced by `to` (which must
/// occur exactly once, so a mutation never silently misses after an edit of the kernel).
fn mutated_tree(tag: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = scratch().join(format!("emu-mutant-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["kernels", "kernels/emu", "tests/emu"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(root().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let path = dir.join("kernels").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(from).count(), 1, "mutation {tag}: {from:?} must occur once in kernels/{file}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn gemm_kernels_match_the_f64_reference_on_the_emulator() {
    let Some(cxx) = cxx() else { return };
    let (ok, out) = build_and_run(&cxx, &root(), "gemm", "real");
    assert!(ok, "emulated GEMM kernels disagree with the reference:\n{out}");
    assert!(out.contains("ok   mma.sync m16n8k8 TF32 fragment layout"), "the emulated mma must be checked:\n{out}");
    assert!(out.contains("ok   bf16 rounding"), "the bf16 rounding must be checked:\n{out}");
    assert!(out.contains("ok   mma.sync m16n8k16 bf16 fragment layout"), "the emulated bf16 mma must be checked:\n{out}");
    for v in ["gemm_v1 ", "gemm_v2 ", "gemm_v2_64 ", "gemm_v3 ", "gemm_v3_64 ", "gemm_v3_tf32 ", "gemm_v3_tf32_64 ", "gemm_v3_bf16 ", "gemm_v3_bf16_64 "] {
        assert!(out.contains(&format!("ok   {v}")), "variant {v}must run:\n{out}");
    }
    // The harness catches broken kernels: a wrong column quadrant, a K bound that reads one
    // element past B (its product is zero, so only the sanitizer sees it), and v1 losing its
    // last K slice; for the tensor-core kernel (whose mma the emulator computes from the PTX ISA's
    // fragment layouts): B fragments read with the 16-bit types' k index (2t, 2t + 1), one of
    // 3xTF32's two cross terms dropped (TF32 error, ~1e-4, against the f32 tolerance), and the
    // accumulator rows g / g + 8 swapped on the way out, mma products added straight into the
    // running total (the drift check on the long-K shape: the emulated mma rounds toward zero, as
    // an H100 does); the bf16 kernel (m16n8k16) truncating
    // instead of rounding, rounding by truncation inside bf16_rne, ties rounded away from zero
    // (caught by the rounding cases: random data almost never ties), a B word read from the wrong
    // k pair, and the emulator's bf16 mma taking A's two halves of a word in the wrong order (both operands
    // swapped alike would be the same sum: not a mutant). (v2 and v3 load their slices
    // through one fetch_slice, so the K-bound mutant covers both.)
    let mutants = [
        ("v3-bfrag", "matmul.cu", "sm.b[buf][c][ks + t + 4]", "sm.b[buf][c][ks + 2 * t + 1]"),
        ("v3-split", "matmul.cu", "mma_tf32(e[j], ah, bl[j]);", ";"),
        ("v3-epilogue", "matmul.cu", "g + 8 * (q >> 1)", "g + 8 * (q & 1)"),
        ("v3-unflushed", "matmul.cu", "#define V3_FRESH_SLICES 1", "#define V3_FRESH_SLICES 0"),
        ("bf16-unrounded", "matmul.cu", "(unsigned short)(__float_as_uint(bf16_rne(x)) >> 16)", "(unsigned short)(__float_as_uint(x) >> 16)"),
        ("bf16-bfrag", "matmul.cu", "bf16_pair(row, t + 4)", "bf16_pair(row, t + 2)"),
        ("emu-bf16-a-halves", "emu/cuda_emu.h", "(r / 8) + 2 * (k / 8)], k)", "(r / 8) + 2 * (k / 8)], k + 1)"),
        ("bf16-truncate", "matmul.cu", "(u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u", "u & 0xffff0000u"),
        ("bf16-ties-away", "matmul.cu", "0x7fffu + ((u >> 16) & 1u)", "0x8000u"),
        // The emulator's own mma: A's registers a1/a2 swapped; cvt.rna truncating.
        ("emu-mma-afrag", "emu/cuda_emu.h", "(r / 8) + 2 * (k / 4)", "2 * (r / 8) + (k / 4)"),
        ("emu-tf32-truncate", "emu/cuda_emu.h", "(u + 0x1000u) & 0xffffe000u", "u & 0xffffe000u"),
        ("v2-quadrant", "matmul.cu", "BN2 / 2 + tx * 4 + (j - 4)", "BN2 / 2 + tx * 4 + (j - 3)"),
        ("v2-kbound", "matmul.cu", "rb[e] = (gn < N && gk < K)", "rb[e] = (gn < N && gk <= K)"),
        ("v1-kloop", "matmul.cu", "for (int k0 = 0; k0 < K; k0 += BK) {", "for (int k0 = 0; k0 + BK < K; k0 += BK) {"),
    ];
    for (tag, file, from, to) in mutants {
        let tree = mutated_tree(tag, file, from, to);
        // The bf16 mutants touch only the bf16 kernel: the harness runs just that variant (after
        // its rounding cases), not every GEMM before it.
        let only: &[&std::ffi::OsStr] = if tag.contains("bf16-") { &[std::ffi::OsStr::new("gemm_v3_bf16")] } else { &[] };
        let (ok, out) = run(&build(&cxx, &tree, "gemm", tag), only);
        assert!(!ok, "mutant {tag} ({from:?} → {to:?}) passed the emulated test:\n{out}");
    }
}

fn write_f32(path: &Path, v: &[f64]) {
    std::fs::write(path, v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

fn read_f32(path: &Path) -> Vec<f64> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
}

fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| x as f32).collect::<Vec<f32>>(), shape).unwrap()
}

/// One attention case through the emulated kernels (`exe`) and through engram's CPU op; returns
/// the worst relative error over the output and the three gradients, or a description of the
/// first failure.
fn attention_case(exe: &Path, variant: &str, dir: &Path, dims: [usize; 5], p: f64, mask: Option<Vec<i64>>) -> Result<f64, String> {
    let [b, nh, tq, tk, hs] = dims;
    let mut rng = Rng::new((b * 1000 + tq * 10 + tk) as u64);
    let (q, k, v) = (randn(&mut rng, &[b, nh, tq, hs]), randn(&mut rng, &[b, nh, tk, hs]), randn(&mut rng, &[b, nh, tk, hs]));
    let dout = randn(&mut rng, &[b, nh, tq, hs]);
    let scale = 1.0 / (hs as f64).sqrt();
    let tape_seed = 77;
    let tape = Tape::training(tape_seed);
    let (qt, kt, vt) = (q.clone().requires_grad(), k.clone().requires_grad(), v.clone().requires_grad());
    let m = mask.as_ref().map(|m| Tensor::from_ids(m.clone(), &[b, tk]).unwrap());
    let out = ops::attention(&tape, &qt, &kt, &vt, m.as_ref(), scale, p).unwrap();
    let g = tape.backward_with(&out, &dout).unwrap();
    // The op's dropout seed: the tape's first dropout call (none is drawn when p = 0).
    let seed = if p > 0.0 { ops::dropout::mix_seed(tape_seed, 0) } else { 0 };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("dims.txt"), format!("{b} {nh} {tq} {tk} {hs} {scale} {seed} {p} {}\n", u8::from(mask.is_some()))).unwrap();
    for (name, t) in [("q", &q), ("k", &k), ("v", &v), ("dout", &dout)] {
        write_f32(&dir.join(name), &t.to_f64_vec());
    }
    if let Some(m) = &mask {
        std::fs::write(dir.join("mask"), m.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    let (ok, log) = run(exe, &[dir.as_os_str(), variant.as_ref()]);
    if !ok {
        return Err(format!("the emulated kernels ({variant}) failed:\n{log}"));
    }
    let mut worst = 0.0f64;
    let want = [("out", out.to_f64_vec()), ("dq", g.tensor(&qt).unwrap().to_f64_vec()), ("dk", g.tensor(&kt).unwrap().to_f64_vec()), ("dv", g.tensor(&vt).unwrap().to_f64_vec())];
    for (name, w) in want {
        let got = read_f32(&dir.join(name));
        if got.len() != w.len() {
            return Err(format!("{name}: {} values, want {}", got.len(), w.len()));
        }
        for (i, (x, y)) in got.iter().zip(&w).enumerate() {
            let err = (x - y).abs() / (1e-5 / 1e-4 + y.abs());
            if !(err <= 1e-4) {
                return Err(format!("{variant} {name}[{i}] = {x}, CPU {y} (dims {dims:?}, p {p})"));
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

/// The cases: dropout off and on (the CUDA dropout paths that only ran on paper so far), a
/// padding mask with a fully padded sequence, no mask, and Tk / HS that are not multiples of 4
/// or of the block size.
fn attention_cases(exe: &Path, variant: &str, tag: &str) -> Result<(), String> {
    let dir = scratch().join(format!("emu-attention-{tag}-{variant}"));
    let masked = |b: usize, tk: usize| -> Vec<i64> {
        (0..b * tk).map(|i| if i / tk == b - 1 { 0 } else { i64::from((i % tk) % 5 != 3) }).collect()
    };
    let cases: [([usize; 5], f64, Option<Vec<i64>>); 6] = [
        ([2, 3, 5, 7, 8], 0.0, Some(masked(2, 7))),
        ([2, 2, 9, 9, 16], 0.25, Some(masked(2, 9))),
        ([1, 2, 6, 130, 33], 0.1, None),
        ([3, 1, 4, 11, 5], 0.5, Some(masked(3, 11))),
        // Several 32-row and 32-key tiles, ragged at both ends, the largest head v2 takes.
        ([2, 1, 37, 70, 64], 0.1, Some(masked(2, 70))),
        ([1, 1, 65, 33, 64], 0.0, None),
    ];
    for (i, (dims, p, mask)) in cases.into_iter().enumerate() {
        let worst = attention_case(exe, variant, &dir.join(i.to_string()), dims, p, mask)?;
        eprintln!("attention {variant} {dims:?} p {p}: worst rel err {worst:.2e}");
    }
    Ok(())
}

#[test]
fn attention_kernels_match_the_cpu_op_with_dropout_on_the_emulator() {
    let Some(cxx) = cxx() else { return };
    let exe = build(&cxx, &root(), "attention", "real");
    for variant in ["v1", "v2"] {
        if let Err(e) = attention_cases(&exe, variant, "real") {
            panic!("{e}");
        }
    }
    // A kernel that draws a different dropout mask in one place, or rescales the running sum
    // wrongly, fails.
    let mutants = [
        ("v1", "attn-fwd-drop", "dropout_keep(seed, (bh * Tq + i) * Tk + j, p) ? pj * inv", "dropout_keep(seed, (bh * Tq + i) * Tk + j + 1, p) ? pj * inv"),
        ("v1", "attn-kv-drop", "dropout_keep(seed, ij, p) ? probs[ij] * inv", "dropout_keep(seed ^ 1, ij, p) ? probs[ij] * inv"),
        ("v1", "attn-q-mask", "if (p > 0.f) dp = dropout_keep(seed, (bh * Tq + i) * Tk + j, p) ? dp * inv : 0.f;", ""),
        ("v2", "attn2-corr", "l = l * corr + at2_sum4(psum);", "l = l + at2_sum4(psum);"),
        ("v2", "attn2-kv-drop", "pd = keep ? pij * inv : 0.f;", "pd = pij * inv;"),
    ];
    for (variant, tag, from, to) in mutants {
        let tree = mutated_tree(tag, "attention.cu", from, to);
        let exe = build(&cxx, &tree, "attention", tag);
        assert!(attention_cases(&exe, variant, tag).is_err(), "mutant {tag} ({from:?} → {to:?}) matched the CPU op");
    }
}

/// `steps` SGD steps of engram's CPU optimizer on one parameter (random gradients) against the
/// emulated `sgd_step_v1`; Err describes the first weight that differs.
fn sgd_case(exe: &Path, dir: &Path, n: usize, cfg: SgdConfig, wd: f64) -> Result<(), String> {
    let steps = 3;
    let mut rng = Rng::new(n as u64 + 5);
    let w0 = randn(&mut rng, &[n]);
    std::fs::create_dir_all(dir).unwrap();
    write_f32(&dir.join("w"), &w0.to_f64_vec());
    let mut w = w0.clone().requires_grad();
    let mut opt = Sgd::new(cfg);
    let lr = 0.05;
    for t in 0..steps {
        let g = randn(&mut rng, &[n]);
        write_f32(&dir.join(format!("g{t}")), &g.to_f64_vec());
        let tape = Tape::training(0);
        let y = ops::scale(&tape, &w, 1.0).unwrap();
        let grads = tape.backward_with(&y, &g).unwrap();
        let mut groups = vec![ParamGroup { params: vec![&mut w], weight_decay: wd }];
        opt.step(&mut groups, &grads, lr).unwrap();
    }
    std::fs::write(dir.join("cfg.txt"), format!("{n} {steps} {lr} {wd} {} {} {}\n", cfg.momentum, cfg.dampening, u8::from(cfg.nesterov))).unwrap();
    let (ok, log) = run(exe, &[dir.as_os_str()]);
    if !ok {
        return Err(format!("the emulated kernel failed:\n{log}"));
    }
    let got = read_f32(&dir.join("w_out"));
    for (i, (x, y)) in got.iter().zip(w.to_f64_vec()).enumerate() {
        // Same f32 operations in the same order: equal up to FMA contraction.
        if !((x - y).abs() <= 1e-6 * (1.0 + y.abs())) {
            return Err(format!("w[{i}] = {x}, CPU {y} (n {n}, {cfg:?}, wd {wd})"));
        }
    }
    Ok(())
}

fn sgd_cases(exe: &Path, tag: &str) -> Result<(), String> {
    let dir = scratch().join(format!("emu-sgd-{tag}"));
    let cases = [
        (1000, SgdConfig { momentum: 0.9, dampening: 0.0, nesterov: false }, 0.01),
        (257, SgdConfig { momentum: 0.9, dampening: 0.1, nesterov: true }, 0.0),
        (300, SgdConfig { momentum: 0.0, dampening: 0.0, nesterov: false }, 0.1),
    ];
    for (i, (n, cfg, wd)) in cases.into_iter().enumerate() {
        sgd_case(exe, &dir.join(i.to_string()), n, cfg, wd)?;
    }
    Ok(())
}

#[test]
fn sgd_kernel_matches_the_cpu_optimizer_on_the_emulator() {
    let Some(cxx) = cxx() else { return };
    let exe = build(&cxx, &root(), "sgd", "real");
    if let Err(e) = sgd_cases(&exe, "real") {
        panic!("{e}");
    }
    let tree = mutated_tree("sgd-first", "sgd.cu", "const float b = first ? d : mu * buf[i] + one_minus_damp * d;", "const float b = mu * buf[i] + one_minus_damp * d;");
    assert!(sgd_cases(&build(&cxx, &tree, "sgd", "sgd-first"), "sgd-first").is_err(), "a kernel that ignores the first step's buffer rule passed");
}

/// Dropout forward and backward (CPU op vs `dropout_fwd_v1`/`dropout_bwd_v1`: the same mask, bit
/// for bit), layer norm, softmax, cross-entropy and both GELUs forward and backward (row kernels
/// reduce through warp shuffles), embedding (atomic backward, padding id), mean pooling, the
/// f64 sum of squares behind GPU gradient clipping (atomics across blocks), and 3 AdamW steps
/// (CPU optimizer vs `adamw_step_v1`).
fn pointwise_cases(exe: &Path, tag: &str) -> Result<(), String> {
    let dir = scratch().join(format!("emu-pointwise-{tag}"));
    let mut rng = Rng::new(21);
    for (i, (n, p)) in [(1000usize, 0.1), (4099, 0.5), (7, 0.9)].into_iter().enumerate() {
        let d = dir.join(format!("dropout{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let (x, dy) = (randn(&mut rng, &[n]).requires_grad(), randn(&mut rng, &[n]));
        let tape = Tape::training(5);
        let y = ops::dropout(&tape, &x, p).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        write_f32(&d.join("x"), &x.to_f64_vec());
        write_f32(&d.join("dy"), &dy.to_f64_vec());
        std::fs::write(d.join("cfg.txt"), format!("{n} {} {p}\n", ops::dropout::mix_seed(5, 0))).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "dropout".as_ref()]);
        if !ok {
            return Err(format!("dropout kernels failed:\n{log}"));
        }
        for (name, want) in [("y", y.to_f64_vec()), ("dx", g.tensor(&x).unwrap().to_f64_vec())] {
            let got = read_f32(&d.join(name));
            if let Some(k) = (0..n).find(|&k| got[k].to_bits() != want[k].to_bits()) {
                return Err(format!("dropout {name}[{k}] = {}, CPU {} (n {n}, p {p})", got[k], want[k]));
            }
        }
    }
    for (i, (rows, c)) in [(5usize, 384usize), (3, 37), (2, 1000)].into_iter().enumerate() {
        let d = dir.join(format!("ln{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let (x, w, b) = (randn(&mut rng, &[rows, c]).requires_grad(), randn(&mut rng, &[c]).requires_grad(), randn(&mut rng, &[c]).requires_grad());
        let dy = randn(&mut rng, &[rows, c]);
        let tape = Tape::training(0);
        let y = ops::layer_norm(&tape, &x, &w, &b, 1e-12).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        for (name, t) in [("x", &x), ("w", &w), ("b", &b), ("dy", &dy)] {
            write_f32(&d.join(name), &t.to_f64_vec());
        }
        std::fs::write(d.join("cfg.txt"), format!("{rows} {c} 1e-12\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "layer_norm".as_ref()]);
        if !ok {
            return Err(format!("layer_norm kernels failed:\n{log}"));
        }
        let want = [("y", y.to_f64_vec()), ("dx", g.tensor(&x).unwrap().to_f64_vec()), ("dw", g.tensor(&w).unwrap().to_f64_vec()), ("db", g.tensor(&b).unwrap().to_f64_vec())];
        for (name, want) in want {
            for (k, (x, y)) in read_f32(&d.join(name)).iter().zip(&want).enumerate() {
                if !((x - y).abs() <= 1e-5 + 1e-4 * y.abs()) {
                    return Err(format!("layer_norm {name}[{k}] = {x}, CPU {y} (rows {rows}, c {c})"));
                }
            }
        }
    }
    // Row softmax (with a fully masked row), cross-entropy (with ignored targets), GELU and
    // tanh-GELU: forward and backward against the CPU ops, a random upstream gradient each.
    let close = |what: &str, got: &[f64], want: &[f64]| -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
        }
        match got.iter().zip(want).position(|(x, y)| !((x - y).abs() <= 1e-5 + 1e-4 * y.abs())) {
            Some(k) => Err(format!("{what}[{k}] = {}, CPU {}", got[k], want[k])),
            None => Ok(()),
        }
    };
    {
        let d = dir.join("softmax");
        std::fs::create_dir_all(&d).unwrap();
        let (rows, c) = (4usize, 300usize);
        let mut xv = randn(&mut rng, &[rows, c]).to_f64_vec();
        xv[2 * c..3 * c].iter_mut().for_each(|v| *v = f64::NEG_INFINITY);
        let x = Tensor::from_vec(xv.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[rows, c]).unwrap().requires_grad();
        let dy = randn(&mut rng, &[rows, c]);
        let tape = Tape::training(0);
        let y = ops::softmax(&tape, &x).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        write_f32(&d.join("x"), &xv);
        write_f32(&d.join("dy"), &dy.to_f64_vec());
        std::fs::write(d.join("cfg.txt"), format!("{rows} {c}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "softmax".as_ref()]);
        if !ok {
            return Err(format!("softmax kernels failed:\n{log}"));
        }
        close("softmax y", &read_f32(&d.join("y")), &y.to_f64_vec())?;
        close("softmax dx", &read_f32(&d.join("dx")), &g.tensor(&x).unwrap().to_f64_vec())?;
    }
    // Plain (7 rows of 37) and class-weighted (9 rows of 300, one class weighing 0) cross-entropy,
    // without and with label smoothing; a third of the rows ignored.
    for (what, rows, v, eps) in [("cross_entropy", 7usize, 37usize, 0.0), ("cross_entropy", 7, 37, 0.1), ("cross_entropy_weighted", 9, 300, 0.0), ("cross_entropy_weighted", 9, 300, 0.1)] {
        let d = dir.join(format!("{what}-{eps}"));
        std::fs::create_dir_all(&d).unwrap();
        let x = randn(&mut rng, &[rows, v]).requires_grad();
        let t: Vec<i64> = (0..rows as i64).map(|i| if i % 3 == 1 { ops::IGNORE_INDEX } else { (i * 7) % v as i64 }).collect();
        let tt = Tensor::from_ids(t.clone(), &[rows]).unwrap();
        let tape = Tape::training(0);
        let w: Vec<f64> = (0..v).map(|j| [0.5, 2.0, 0.0, 1.25][j % 4]).collect();
        let loss = if what == "cross_entropy" { ops::cross_entropy_smoothed(&tape, &x, &tt, eps) } else { ops::cross_entropy_weighted(&tape, &x, &tt, &w, eps) }.unwrap();
        let g = tape.backward(&loss).unwrap();
        write_f32(&d.join("x"), &x.to_f64_vec());
        write_f32(&d.join("w"), &w);
        std::fs::write(d.join("t"), t.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        std::fs::write(d.join("cfg.txt"), format!("{rows} {v} {eps}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), what.as_ref()]);
        if !ok {
            return Err(format!("{what} kernels failed:\n{log}"));
        }
        close(&format!("{what} ε={eps} loss"), &read_f32(&d.join("loss")), &[loss.item().unwrap()])?;
        close(&format!("{what} ε={eps} dx"), &read_f32(&d.join("dx")), &g.tensor(&x).unwrap().to_f64_vec())?;
    }
    for what in ["gelu", "gelu_tanh"] {
        let d = dir.join(what);
        std::fs::create_dir_all(&d).unwrap();
        let n = 3001usize;
        let x = Tensor::from_vec(rng.normal_vec(n).into_iter().map(|v| (3.0 * v) as f32).collect::<Vec<f32>>(), &[n]).unwrap().requires_grad();
        let dy = randn(&mut rng, &[n]);
        let tape = Tape::training(0);
        let y = if what == "gelu" { ops::gelu(&tape, &x) } else { ops::gelu_tanh(&tape, &x) }.unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        write_f32(&d.join("x"), &x.to_f64_vec());
        write_f32(&d.join("dy"), &dy.to_f64_vec());
        std::fs::write(d.join("cfg.txt"), format!("{n}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), what.as_ref()]);
        if !ok {
            return Err(format!("{what} kernels failed:\n{log}"));
        }
        close(&format!("{what} y"), &read_f32(&d.join("y")), &y.to_f64_vec())?;
        close(&format!("{what} dx"), &read_f32(&d.join("dx")), &g.tensor(&x).unwrap().to_f64_vec())?;
    }
    {
        // Embedding with repeated ids (the backward's atomicAdd) and a padding id.
        let d = dir.join("embedding");
        std::fs::create_dir_all(&d).unwrap();
        let (n, c, v, pad) = (300usize, 24usize, 11usize, 3i64);
        let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7) % v as i64).collect();
        let table = randn(&mut rng, &[v, c]).requires_grad();
        let idt = Tensor::from_ids(ids.clone(), &[n]).unwrap();
        let dy = randn(&mut rng, &[n, c]);
        let tape = Tape::training(0);
        let y = ops::embedding(&tape, &idt, &table, Some(pad)).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        std::fs::write(d.join("ids"), ids.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        write_f32(&d.join("table"), &table.to_f64_vec());
        write_f32(&d.join("dy"), &dy.to_f64_vec());
        std::fs::write(d.join("cfg.txt"), format!("{n} {c} {v} {pad}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "embedding".as_ref()]);
        if !ok {
            return Err(format!("embedding kernels failed:\n{log}"));
        }
        close("embedding y", &read_f32(&d.join("y")), &y.to_f64_vec())?;
        close("embedding dtable", &read_f32(&d.join("dtable")), &g.tensor(&table).unwrap().to_f64_vec())?;
    }
    {
        let d = dir.join("mean_pool");
        std::fs::create_dir_all(&d).unwrap();
        let (b, t, c) = (3usize, 9usize, 20usize);
        let x = randn(&mut rng, &[b, t, c]).requires_grad();
        let mask: Vec<i64> = (0..b * t).map(|i| i64::from(i % t < [9, 4, 1][i / t])).collect();
        let mt = Tensor::from_ids(mask.clone(), &[b, t]).unwrap();
        let dy = randn(&mut rng, &[b, c]);
        let tape = Tape::training(0);
        let y = ops::mean_pool(&tape, &x, &mt).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        write_f32(&d.join("x"), &x.to_f64_vec());
        write_f32(&d.join("dy"), &dy.to_f64_vec());
        std::fs::write(d.join("mask"), mask.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        std::fs::write(d.join("cfg.txt"), format!("{b} {t} {c}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "mean_pool".as_ref()]);
        if !ok {
            return Err(format!("mean_pool kernels failed:\n{log}"));
        }
        close("mean_pool y", &read_f32(&d.join("y")), &y.to_f64_vec())?;
        close("mean_pool dx", &read_f32(&d.join("dx")), &g.tensor(&x).unwrap().to_f64_vec())?;
    }
    {
        // BCE with a positive weight per label, over more elements than the forward's one block.
        let d = dir.join("bce_pos_weight");
        std::fs::create_dir_all(&d).unwrap();
        let (rows, c) = (61usize, 37usize);
        let x = ops::scale(&Tape::inference(), &randn(&mut rng, &[rows, c]), 3.0).unwrap().requires_grad();
        let y: Vec<f64> = (0..rows * c).map(|i| [0.0, 1.0, 0.0, 0.4, 0.0][i % 5]).collect();
        let pw: Vec<f64> = (0..c).map(|j| [1.0, 4.5, 0.0, 0.3][j % 4]).collect();
        let tape = Tape::training(0);
        let loss = ops::binary_cross_entropy_with_logits_weighted(&tape, &x, &Tensor::from_vec(y.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[rows, c]).unwrap(), &pw).unwrap();
        let g = tape.backward(&loss).unwrap();
        write_f32(&d.join("x"), &x.to_f64_vec());
        write_f32(&d.join("y"), &y);
        write_f32(&d.join("pw"), &pw);
        std::fs::write(d.join("cfg.txt"), format!("{} {c}\n", rows * c)).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "bce_pos_weight".as_ref()]);
        if !ok {
            return Err(format!("bce_pos_weight kernels failed:\n{log}"));
        }
        close("bce_pos_weight loss", &read_f32(&d.join("loss")), &[loss.item().unwrap()])?;
        close("bce_pos_weight dx", &read_f32(&d.join("dx")), &g.tensor(&x).unwrap().to_f64_vec())?;
    }
    {
        // Σx² over more elements than one block covers (gradient clipping on the GPU).
        let d = dir.join("sum_squares");
        std::fs::create_dir_all(&d).unwrap();
        let n = 70_001usize;
        let x = randn(&mut rng, &[n]);
        let xs = x.to_f64_vec();
        write_f32(&d.join("x"), &xs);
        std::fs::write(d.join("cfg.txt"), format!("{n}\n")).unwrap();
        let (ok, log) = run(exe, &[d.as_os_str(), "sum_squares".as_ref()]);
        if !ok {
            return Err(format!("sum_squares kernel failed:\n{log}"));
        }
        let ss = read_f32(&d.join("ss"));
        let got = ss[0] + ss[1];
        let want: f64 = xs.iter().map(|v| v * v).sum();
        if !((got - want).abs() <= 1e-9 * want) {
            return Err(format!("sum_squares = {got}, f64 reference {want}"));
        }
    }
    let (n, steps, lr, wd) = (777usize, 3, 1e-3, 0.01);
    let cfg = AdamWConfig::default();
    let d = dir.join("adamw");
    std::fs::create_dir_all(&d).unwrap();
    let w0 = randn(&mut rng, &[n]);
    write_f32(&d.join("w"), &w0.to_f64_vec());
    let mut w = w0.requires_grad();
    let mut opt = AdamW::new(cfg);
    for t in 0..steps {
        let gt = randn(&mut rng, &[n]);
        write_f32(&d.join(format!("g{t}")), &gt.to_f64_vec());
        let tape = Tape::training(0);
        let y = ops::scale(&tape, &w, 1.0).unwrap();
        let grads = tape.backward_with(&y, &gt).unwrap();
        opt.step(&mut [ParamGroup { params: vec![&mut w], weight_decay: wd }], &grads, lr).unwrap();
    }
    std::fs::write(d.join("cfg.txt"), format!("{n} {steps} {lr} {wd} {} {} {}\n", cfg.beta1, cfg.beta2, cfg.eps)).unwrap();
    let (ok, log) = run(exe, &[d.as_os_str(), "adamw".as_ref()]);
    if !ok {
        return Err(format!("adamw kernel failed:\n{log}"));
    }
    for (k, (x, y)) in read_f32(&d.join("w_out")).iter().zip(w.to_f64_vec()).enumerate() {
        if !((x - y).abs() <= 1e-6 * (1.0 + y.abs())) {
            return Err(format!("adamw w[{k}] = {x}, CPU {y}"));
        }
    }
    Ok(())
}

#[test]
fn pointwise_row_and_optimizer_kernels_match_the_cpu_on_the_emulator() {
    let Some(cxx) = cxx() else { return };
    if let Err(e) = pointwise_cases(&build(&cxx, &root(), "pointwise", "real"), "real") {
        panic!("{e}");
    }
    let mutants = [
        ("drop-hash", "common.cuh", "(float)(h >> 40) * (1.f / 16777216.f)", "(float)(h >> 41) * (1.f / 16777216.f)"),
        ("adamw-bias", "adamw.cu", "sqrtf(vi) / bc2_sqrt + eps", "sqrtf(vi) + eps"),
        ("ce-ignore", "cross_entropy.cu", "c += (targets[r] != IGNORE_INDEX) ? 1.0 : 0.0;", "c += 1.0;"),
        ("bce-pw-index", "elementwise_loss.cu", "bce_pw_grad(x[i], y[i], pw[i % c])", "bce_pw_grad(x[i], y[i], pw[(i / c) % c])"),
        ("ce-weight-norm", "cross_entropy.cu", "z += row_w[r];", "z += row_w[r] > 0.f ? 1.0 : 0.0;"),
        ("ce-weight-spread", "cross_entropy.cu", "- eps / (float)v * weight[j]);", "- eps / (float)v);"),
        ("gelu-pdf", "gelu.cu", "dx[i] += dy[i] * (cdf + v * pdf);", "dx[i] += dy[i] * cdf;"),
        ("emb-atomic", "embedding.cu", "atomicAdd(&dtable[id * c + (i % c)], dout[i]);", "dtable[id * c + (i % c)] = dout[i];"),
        ("ss-atomic", "elementwise.cu", "if (threadIdx.x == 0) atomicAdd(acc, s);", "if (threadIdx.x == 0) *acc = s;"),
        ("ln-shuffle", "common.cuh", "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n    return v;\n}\n__device__ __forceinline__ double", "for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n    return v;\n}\n__device__ __forceinline__ double"),
    ];
    for (tag, file, from, to) in mutants {
        let tree = mutated_tree(tag, file, from, to);
        assert!(pointwise_cases(&build(&cxx, &tree, "pointwise", tag), tag).is_err(), "mutant {tag} ({from:?} → {to:?}) matched the CPU");
    }
}

/// The fiber engine (the emulated device's): each thread order catches the missing barrier it
/// must, shuffles, block reductions and atomics across parallel blocks are right, and a barrier
/// reached by part of a block is reported instead of hanging. Built without the sanitizer (it
/// does not follow our stack switches).
#[test]
fn the_fiber_engine_catches_missing_barriers_in_both_thread_orders() {
    let Some(cxx) = cxx() else { return };
    let out_dir = scratch().join("bin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("fibers");
    let r = root();
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-pthread", "-g", "-O2", "-fno-strict-aliasing", "-DENGRAM_EMU_FIBERS", "-include"])
        .arg(r.join("kernels/emu/cuda_emu.h"))
        .arg("-I")
        .arg(r.join("kernels"))
        .arg(r.join("tests/emu/fibers.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for order in ["index", "reverse"] {
        let out = Command::new(&exe).env("ENGRAM_EMU_ORDER", order).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "fiber engine, {order} order:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.matches(" ok").count(), 7, "{text}");
    }
    let out = Command::new(&exe).arg("deadlock").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("deadlocks"), "a divergent barrier must be reported:\n{err}");
}


//! engram's CUDA kernels on the CPU: `kernels/emu/cuda_emu.h` emulates the CUDA execution model
//! (a block's threads as concurrent OS threads, `__syncthreads` as a barrier, shared memory,
//! warp shuffles), so a kernel's indexing, bounds, synchronisation structure and arithmetic are
//! checked against an f64 reference on machines with no GPU — CI included. Performance and
//! hardware limits still need a GPU run (tests/cuda.rs, benches/gpu.rs).
//!
//! Each harness in tests/emu/*.cpp includes one kernels/*.cu file; this test compiles it with the
//! host C++ compiler and runs it. The harness must also fail on a broken kernel: the same
//! harness is rebuilt against mutated copies of the kernel source and must then exit non-zero.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The host C++ compiler (`CXX`, else g++, else clang++), or None.
fn cxx() -> Option<String> {
    let candidates = std::env::var("CXX").into_iter().chain(["g++".to_string(), "clang++".to_string()]);
    candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Compile `tests/emu/<harness>.cpp` found under `tree` (the repository, or a mutated copy of
/// its kernels) and run it; returns (success, output).
fn build_and_run(cxx: &str, tree: &Path, harness: &str, tag: &str) -> (bool, String) {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emu");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(format!("{harness}-{tag}"));
    let src = tree.join("tests/emu").join(format!("{harness}.cpp"));
    // With AddressSanitizer (out-of-bounds global reads and writes fail, as under
    // compute-sanitizer memcheck on a GPU) where the compiler has it, else without.
    let compile = |sanitize: bool| {
        let mut c = Command::new(cxx);
        c.args(["-std=c++20", "-pthread", "-g"]);
        c.args(if sanitize { &["-O1", "-fsanitize=address"][..] } else { &["-O2"][..] });
        c.arg("-include").arg(tree.join("kernels/emu/cuda_emu.h")).arg("-I").arg(tree.join("kernels")).arg(&src).arg("-o").arg(&exe);
        c.output().expect("run the C++ compiler")
    };
    let mut build = compile(true);
    if !build.status.success() {
        eprintln!("note: building {harness} without AddressSanitizer ({cxx} could not link it)");
        build = compile(false);
    }
    assert!(build.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&build.stderr));
    let run = Command::new(&exe).output().expect("run the emulated kernel test");
    (run.status.success(), format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr)))
}

/// A copy of the kernel sources and harnesses with `file`'s `from` replaced by `to` (which must
/// occur exactly once, so a mutation never silently misses after an edit of the kernel).
fn mutated_tree(tag: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("emu-mutant-{tag}"));
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
    let Some(cxx) = cxx() else {
        eprintln!("SKIPPED: no C++ compiler (g++/clang++/CXX) to build the kernel emulator");
        return;
    };
    let (ok, out) = build_and_run(&cxx, &root(), "gemm", "real");
    assert!(ok, "emulated GEMM kernels disagree with the reference:\n{out}");
    assert!(out.contains("gemm_v1") && out.contains("gemm_v2 ") && out.contains("gemm_v2_64"), "every variant must run:\n{out}");
    // The harness catches broken kernels: a wrong column quadrant, a K bound that reads one
    // element past B (its product is zero, so only the sanitizer sees it), and v1 losing its
    // last K slice.
    let mutants = [
        ("v2-quadrant", "matmul.cu", "BN2 / 2 + tx * 4 + (j - 4)", "BN2 / 2 + tx * 4 + (j - 3)"),
        ("v2-kbound", "matmul.cu", "rb[e] = (gn < N && gk < K)", "rb[e] = (gn < N && gk <= K)"),
        ("v1-kloop", "matmul.cu", "for (int k0 = 0; k0 < K; k0 += BK) {", "for (int k0 = 0; k0 + BK < K; k0 += BK) {"),
    ];
    for (tag, file, from, to) in mutants {
        let tree = mutated_tree(tag, file, from, to);
        let (ok, out) = build_and_run(&cxx, &tree, "gemm", tag);
        assert!(!ok, "mutant {tag} ({from:?} → {to:?}) passed the emulated test:\n{out}");
    }
}

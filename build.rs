//! Build script. A default build needs no CUDA toolkit and does nothing here.
//!
//! With `--features cuda` every `kernels/*.cu` is compiled by nvcc into one fatbin: SASS for
//! sm_80 and sm_90 plus compute_80 PTX (JIT fallback for GPUs we did not compile for). The
//! fatbins are embedded into the binary (`$OUT_DIR/kernels.rs`), so a binary built here runs on
//! any machine with a CUDA 13.0+ driver.
//!
//! nvcc is found through `NVCC`, then `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), then the project's
//! pinned install (`scripts/install-nvcc.sh` → `.toolchain/cuda`), then `PATH`. The shipped PTX must
//! come from nvcc 13.0.x: a newer nvcc writes PTX that a 13.0 driver refuses, so any other
//! version is an error unless `ENGRAM_ALLOW_ANY_NVCC=1`.
//! `ENGRAM_PTXAS_VERBOSE=1` prints ptxas's register/spill report per kernel as build warnings.
//! The fatbins are compressed (the driver inflates them at load); `ENGRAM_FATBIN_COMPRESS=0`
//! embeds them plain (larger binaries; what the GPU suite also carries, as a fallback).
//!
//! With `--features cuda-emu` (no CUDA toolkit, no GPU) the host C++ compiler (`CXX`, else g++,
//! else clang++) builds each `kernels/*.cu` with `kernels/emu/cuda_emu.h` into a shared object,
//! and `kernels/emu/driver.cpp` into an emulated `libcuda.so`; the module images name those
//! files, so the binary only runs on the machine that built it (a test build, not a product).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "ENGRAM_PTXAS_VERBOSE", "ENGRAM_FATBIN_COMPRESS", "ENGRAM_ALLOW_ANY_NVCC", "CXX", "ENGRAM_EMU_CXXFLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let built = if env::var_os("CARGO_FEATURE_CUDA_EMU").is_some() { compile_emulated() } else { compile_kernels() };
    if let Err(e) = built {
        eprintln!("\nengram build: {e}\n");
        std::process::exit(1);
    }
}

fn find_nvcc(root: &Path) -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("NVCC") {
        return Ok(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin/nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let pinned = root.join(".toolchain/cuda/nvidia/cu13/bin/nvcc");
    if pinned.is_file() {
        return Ok(pinned);
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err("the `cuda` feature needs nvcc 13.0.x and none was found (NVCC, CUDA_HOME, CUDA_PATH, \
         .toolchain/cuda, PATH). Install the pinned one with ./scripts/install-nvcc.sh"
        .into())
}

fn compile_kernels() -> Result<(), String> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let nvcc = find_nvcc(&root)?;
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    if !version.contains("release 13.0") && env::var_os("ENGRAM_ALLOW_ANY_NVCC").is_none() {
        return Err(format!(
            "{} is not nvcc 13.0.x (it says: {}); the PTX must load on a CUDA 13.0 driver. \
             Run ./scripts/install-nvcc.sh, or set ENGRAM_ALLOW_ANY_NVCC=1 to override",
            nvcc.display(),
            version.lines().last().unwrap_or("?")
        ));
    }
    // The pip layout keeps cuda_fp16.h's <nv/target> in include/cccl.
    let mut includes = vec![root.join("kernels")];
    if let Some(bin) = nvcc.parent() {
        let cccl = bin.join("../include/cccl");
        if cccl.is_dir() {
            includes.push(cccl);
        }
    }
    let verbose = env::var_os("ENGRAM_PTXAS_VERBOSE").is_some();
    let compress = env::var("ENGRAM_FATBIN_COMPRESS").map_or(true, |v| v != "0");

    let kernels = root.join("kernels");
    let mut files: Vec<PathBuf> = fs::read_dir(&kernels)
        .map_err(|e| format!("cannot read {}: {e}", kernels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    files.sort();
    let mut table = String::from("/// (module name, fatbin) for every kernels/*.cu, compiled by build.rs.\npub const MODULES: &[(&str, &[u8])] = &[\n");
    for src in &files {
        println!("cargo:rerun-if-changed={}", src.display());
        if src.extension().is_some_and(|x| x == "cuh") {
            continue;
        }
        let stem = src.file_stem().and_then(|s| s.to_str()).ok_or("bad kernel file name")?.to_string();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        // -Xfatbin=-compress-all: the driver inflates the images at load (as for PyTorch's
        // wheels); matmul's unrolled tensor-core kernels make a 5.5 MB fatbin otherwise, and
        // every binary embeds every module.
        cmd.args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"]);
        if compress {
            cmd.arg("-Xfatbin=-compress-all");
        }
        cmd
            .args(["-gencode", "arch=compute_80,code=sm_80"])
            .args(["-gencode", "arch=compute_90,code=sm_90"])
            .args(["-gencode", "arch=compute_80,code=compute_80"]);
        for inc in &includes {
            cmd.arg("-I").arg(inc);
        }
        if verbose {
            cmd.args(["-Xptxas", "-v"]);
        }
        cmd.arg("-o").arg(&fatbin).arg(src);
        let res = cmd.output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
        let stderr = String::from_utf8_lossy(&res.stderr);
        if !res.status.success() {
            return Err(format!("nvcc failed on {}:\n{stderr}", src.display()));
        }
        if verbose {
            for line in stderr.lines().filter(|l| l.contains("registers") || l.contains("spill") || l.contains("Compiling entry")) {
                println!("cargo:warning={stem}: {}", line.trim());
            }
        }
        table.push_str(&format!("    ({stem:?}, include_bytes!({:?})),\n", fatbin.display().to_string()));
    }
    table.push_str("];\n");
    fs::write(out.join("kernels.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
}

/// The host C++ compiler for the emulated device.
fn find_cxx() -> Result<String, String> {
    let candidates = env::var("CXX").into_iter().chain(["g++".to_string(), "clang++".to_string()]);
    for c in candidates {
        if Command::new(&c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c);
        }
    }
    Err("the `cuda-emu` feature needs a C++20 compiler (CXX, g++ or clang++) and none was found".into())
}

/// Every `extern "C" __global__` kernel in a .cu source: (name, __launch_bounds__ thread limit).
fn kernel_entries(src: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (i, _) in src.match_indices("__global__ void") {
        let mut rest = src[i + "__global__ void".len()..].trim_start();
        let mut bound = 1024;
        if let Some(r) = rest.strip_prefix("__launch_bounds__(") {
            let close = r.find(')').unwrap_or(0);
            bound = r[..close].split(',').next().and_then(|n| n.trim().parse().ok()).unwrap_or(1024);
            rest = r[close + 1..].trim_start();
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.push((name, bound));
        }
    }
    out
}

fn compile_emulated() -> Result<(), String> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?).join("emu");
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let cxx = find_cxx()?;
    let kernels = root.join("kernels");
    let header = kernels.join("emu/cuda_emu.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed={}", kernels.join("emu/driver.cpp").display());
    let mut files: Vec<PathBuf> = fs::read_dir(&kernels)
        .map_err(|e| format!("cannot read {}: {e}", kernels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();

    // One translation unit per module: the kernel source plus a launcher per kernel.
    let mut jobs: Vec<(Vec<String>, PathBuf, String)> = Vec::new();
    let mut table = String::from("/// (module name, emulated module image) for every kernels/*.cu, compiled by build.rs.\npub const MODULES: &[(&str, &[u8])] = &[\n");
    for src in &files {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().and_then(|s| s.to_str()).ok_or("bad kernel file name")?.to_string();
        let text = fs::read_to_string(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        let mut tu = format!("#include {:?}\n", src.display().to_string());
        for (name, bound) in kernel_entries(&text) {
            tu.push_str(&format!("ENGRAM_EMU_KERNEL({name}, {bound})\n"));
        }
        let tu_path = out.join(format!("{stem}.cpp"));
        fs::write(&tu_path, tu).map_err(|e| e.to_string())?;
        let so = out.join(format!("libengram_emu_{stem}.so"));
        let args = vec![
            "-DENGRAM_EMU_FIBERS".to_string(),
            "-include".to_string(),
            header.display().to_string(),
            "-I".to_string(),
            kernels.display().to_string(),
            tu_path.display().to_string(),
        ];
        table.push_str(&format!("    ({stem:?}, concat!(\"ENGRAM-EMU-MODULE:\", {:?}, \"\\0\").as_bytes()),\n", so.display().to_string()));
        jobs.push((args, so, src.display().to_string()));
    }
    table.push_str("];\n");
    let driver = out.join("libcuda.so");
    jobs.push((
        vec!["-Wl,-soname,libcuda.so".to_string(), kernels.join("emu/driver.cpp").display().to_string(), "-ldl".to_string()],
        driver.clone(),
        "kernels/emu/driver.cpp".to_string(),
    ));
    table.push_str(&format!("/// The emulated CUDA driver library.\npub const EMU_DRIVER: &str = {:?};\n", driver.display().to_string()));

    // Extra compiler flags for the emulated modules and driver (e.g. -DENGRAM_EMU_UCONTEXT).
    let extra = env::var("ENGRAM_EMU_CXXFLAGS").unwrap_or_default();
    let extra = &extra;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(args, so, what)| {
                let cxx = &cxx;
                s.spawn(move || {
                    let res = Command::new(cxx)
                        .args(["-std=c++20", "-O2", "-g", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing"])
                        .args(extra.split_whitespace())
                        .args(args)
                        .arg("-o")
                        .arg(so)
                        .output()
                        .map_err(|e| format!("cannot run {cxx}: {e}"))?;
                    if res.status.success() {
                        Ok(())
                    } else {
                        Err(format!("{cxx} failed on {what} (emulated device):\n{}", String::from_utf8_lossy(&res.stderr)))
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("compiler thread panicked".into()))).collect()
    });
    for r in results {
        r?;
    }
    fs::write(out.parent().unwrap().join("kernels.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
}

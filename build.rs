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

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "ENGRAM_PTXAS_VERBOSE", "ENGRAM_ALLOW_ANY_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = compile_kernels() {
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
        cmd.args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
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

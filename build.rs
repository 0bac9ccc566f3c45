//! Build script. With `--features cuda` it will compile `kernels/*.cu` with the pinned nvcc
//! (the CUDA backend issue); a default build needs no CUDA toolkit and does nothing here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:warning=engram: the `cuda` feature has no kernels yet; building the CPU engine only");
    }
}

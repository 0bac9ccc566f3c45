//! Loading the PyTorch fixtures in `tests/fixtures/` (made by `tests/fixtures/generate.py`).
#![allow(dead_code)]

pub mod toy;

use engram::Tensor;
use serde_json::Value;

/// The repository root: the source tree, or the working directory when the test binary was
/// carried to another machine and runs from the repository root there.
pub fn root() -> std::path::PathBuf {
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("weights").is_dir() {
        built
    } else {
        std::path::PathBuf::from(".")
    }
}

/// Reads `tests/fixtures/<name>` from the source tree, or relative to the working directory when
/// the test binary was carried to another machine.
pub fn load(name: &str) -> Value {
    let built = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let path = if std::path::Path::new(&built).exists() { built } else { format!("tests/fixtures/{name}") };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn shape(v: &Value) -> Vec<usize> {
    v["shape"].as_array().expect("shape").iter().map(|x| x.as_u64().expect("dim") as usize).collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v["data"].as_array().expect("data").iter().map(|x| x.as_f64().expect("float")).collect()
}

/// An f32 tensor from `{"shape", "data"}`.
pub fn f32_tensor(v: &Value) -> Tensor {
    Tensor::from_vec(floats(v).into_iter().map(|x| x as f32).collect::<Vec<f32>>(), &shape(v)).unwrap()
}

/// An I64 tensor from `{"shape", "ids"}`.
pub fn id_tensor(v: &Value) -> Tensor {
    let ids = v["ids"].as_array().expect("ids").iter().map(|x| x.as_i64().expect("int")).collect();
    Tensor::from_ids(ids, &shape(v)).unwrap()
}

/// The definition-tier tolerance: 1e-5 abs + 1e-4 rel in f32.
pub const ATOL: f64 = 1e-5;
pub const RTOL: f64 = 1e-4;

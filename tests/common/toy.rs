//! The two-layer toy encoder of tests/fixtures/toy.json, built only from engram's ops; shared by
//! the CPU test (vs PyTorch) and the CUDA test (GPU vs CPU).
#![allow(dead_code)]

use std::collections::BTreeMap;

use super::*;
use engram::{ops, Result, Tape, Tensor};

pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub l: usize,
}

pub fn forward(tape: &Tape, p: &BTreeMap<String, Tensor>, d: &Dims, ids: &Tensor, mask: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let w = |n: &str| &p[n];
    let pos = Tensor::from_ids((0..d.b * d.t).map(|i| (i % d.t) as i64).collect(), &[d.b, d.t])?.to_device(ids.device())?;
    let x = ops::add(tape, &ops::embedding(tape, ids, w("emb.word"), None)?, &ops::embedding(tape, &pos, w("emb.pos"), None)?)?;
    let mut x = ops::layer_norm(tape, &x, w("emb.ln.weight"), w("emb.ln.bias"), 1e-12)?; // (B, T, C)
    let scale = 1.0 / ((d.c / d.nh) as f64).sqrt();
    for l in 0..d.l {
        let proj = |n: &str| -> Result<Tensor> {
            let h = ops::linear(tape, &x, w(&format!("l{l}.{n}.weight")), Some(w(&format!("l{l}.{n}.bias"))))?;
            ops::split_heads(tape, &h, d.nh) // (B, NH, T, HS)
        };
        let (q, k, v) = (proj("q")?, proj("k")?, proj("v")?);
        let a = ops::merge_heads(tape, &ops::attention(tape, &q, &k, &v, Some(mask), scale, 0.0)?)?; // (B, T, C)
        let o = ops::linear(tape, &a, w(&format!("l{l}.o.weight")), Some(w(&format!("l{l}.o.bias"))))?;
        x = ops::layer_norm(tape, &ops::add(tape, &x, &o)?, w(&format!("l{l}.ln1.weight")), w(&format!("l{l}.ln1.bias")), 1e-12)?;
        let f = ops::gelu(tape, &ops::linear(tape, &x, w(&format!("l{l}.ff1.weight")), Some(w(&format!("l{l}.ff1.bias"))))?)?;
        let f = ops::linear(tape, &f, w(&format!("l{l}.ff2.weight")), Some(w(&format!("l{l}.ff2.bias"))))?;
        x = ops::layer_norm(tape, &ops::add(tape, &x, &f)?, w(&format!("l{l}.ln2.weight")), w(&format!("l{l}.ln2.bias")), 1e-12)?;
    }
    let pooled = ops::mean_pool(tape, &x, mask)?; // (B, C)
    let logits = ops::linear(tape, &pooled, w("cls.weight"), Some(w("cls.bias")))?; // (B, K)
    ops::cross_entropy(tape, &logits, labels)
}

pub fn setup() -> (serde_json::Value, BTreeMap<String, Tensor>, Dims) {
    let fx = load("toy.json");
    let p: BTreeMap<String, Tensor> =
        fx["params"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), f32_tensor(v).requires_grad())).collect();
    let dm = &fx["dims"];
    let g = |k: &str| dm[k].as_u64().unwrap() as usize;
    let d = Dims { b: g("B"), t: g("T"), c: g("C"), nh: g("NH"), l: g("L") };
    (fx, p, d)
}


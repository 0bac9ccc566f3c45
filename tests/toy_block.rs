//! A two-layer post-LN transformer encoder built only from engram's ops (embedding, layer norm,
//! linear, head split, fused attention with padding mask, head merge, GELU, residual adds, mean
//! pooling, cross-entropy): its loss and every parameter gradient match PyTorch on the same
//! weights, and 40 AdamW steps follow PyTorch's loss curve. Fixture: tests/fixtures/toy.json.

mod common;

use std::collections::BTreeMap;

use common::*;
use engram::optim::{hf_param_groups, AdamW, AdamWConfig};
use engram::testing::assert_close;
use engram::{ops, Result, Tape, Tensor};

struct Dims {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    l: usize,
}

fn forward(tape: &Tape, p: &BTreeMap<String, Tensor>, d: &Dims, ids: &Tensor, mask: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let w = |n: &str| &p[n];
    let pos = Tensor::from_ids((0..d.b * d.t).map(|i| (i % d.t) as i64).collect(), &[d.b, d.t])?;
    let x = ops::add(tape, &ops::embedding(tape, ids, w("emb.word"), None)?, &ops::embedding(tape, &pos, w("emb.pos"), None)?)?;
    let mut x = ops::layer_norm(tape, &x, w("emb.ln.weight"), w("emb.ln.bias"), 1e-12)?; // (B, T, C)
    let scale = 1.0 / ((d.c / d.nh) as f64).sqrt();
    for l in 0..d.l {
        let proj = |n: &str| -> Result<Tensor> {
            let h = ops::linear(tape, &x, w(&format!("l{l}.{n}.weight")), Some(w(&format!("l{l}.{n}.bias"))))?;
            ops::split_heads(tape, &h, d.nh) // (B, NH, T, HS)
        };
        let (q, k, v) = (proj("q")?, proj("k")?, proj("v")?);
        let a = ops::merge_heads(tape, &ops::attention(tape, &q, &k, &v, Some(mask), scale)?)?; // (B, T, C)
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

fn setup() -> (serde_json::Value, BTreeMap<String, Tensor>, Dims) {
    let fx = load("toy.json");
    let p: BTreeMap<String, Tensor> =
        fx["params"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), f32_tensor(v).requires_grad())).collect();
    let dm = &fx["dims"];
    let g = |k: &str| dm[k].as_u64().unwrap() as usize;
    let d = Dims { b: g("B"), t: g("T"), c: g("C"), nh: g("NH"), l: g("L") };
    (fx, p, d)
}

#[test]
fn toy_encoder_loss_and_every_gradient_match_pytorch() {
    let (fx, p, d) = setup();
    let (ids, mask, labels) = (id_tensor(&fx["ids"]), id_tensor(&fx["mask"]), id_tensor(&fx["labels"]));
    let tape = Tape::training(0);
    let loss = forward(&tape, &p, &d, &ids, &mask, &labels).unwrap();
    assert_close("toy loss", &[loss.item().unwrap()], &[fx["loss"].as_f64().unwrap()], ATOL, RTOL);
    let grads = tape.backward(&loss).unwrap();
    assert!(tape.is_empty(), "backward must consume the tape");
    for (name, t) in &p {
        let g = grads.get::<f32>(t).unwrap_or_else(|| panic!("{name} received no gradient"));
        let got: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        assert_close(&format!("d{name}"), &got, &floats(&fx["grads"][name]), ATOL, RTOL);
    }
}

#[test]
fn toy_encoder_trains_like_pytorch() {
    let (fx, mut p, d) = setup();
    let (ids, mask, labels) = (id_tensor(&fx["ids"]), id_tensor(&fx["mask"]), id_tensor(&fx["labels"]));
    let mut opt = AdamW::new(AdamWConfig::default());
    let lr = fx["lr"].as_f64().unwrap();
    let wd = fx["weight_decay"].as_f64().unwrap();
    let mut curve = Vec::new();
    for _ in 0..fx["curve"].as_array().unwrap().len() {
        let tape = Tape::training(0);
        let loss = forward(&tape, &p, &d, &ids, &mask, &labels).unwrap();
        curve.push(loss.item().unwrap());
        let grads = tape.backward(&loss).unwrap();
        // The fixture's rule: no decay for biases and the LayerNorms ("ln" in the name).
        let named: Vec<(String, &mut Tensor)> = p.iter_mut().map(|(k, v)| (k.replace("ln", "LayerNorm"), v)).collect();
        opt.step(&mut hf_param_groups(named, wd), &grads, lr).unwrap();
    }
    let want: Vec<f64> = fx["curve"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close("toy loss curve", &curve, &want, 1e-4, 1e-4);
    assert!(curve.last().unwrap() < &(0.1 * curve[0]), "loss did not fall: {curve:?}");
}

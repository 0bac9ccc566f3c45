//! A two-layer post-LN transformer encoder built only from engram's ops (embedding, layer norm,
//! linear, head split, fused attention with padding mask, head merge, GELU, residual adds, mean
//! pooling, cross-entropy): its loss and every parameter gradient match PyTorch on the same
//! weights, and 40 AdamW steps follow PyTorch's loss curve. Fixture: tests/fixtures/toy.json.

mod common;

use common::toy::*;
use common::*;
use engram::optim::{hf_param_groups, AdamW, AdamWConfig};
use engram::testing::assert_close;
use engram::{Tape, Tensor};

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

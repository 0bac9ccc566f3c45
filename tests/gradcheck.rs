//! The math tier: every op's backward against f64 central finite differences, with random inputs
//! and random upstream gradients, at awkward shapes (widths not a multiple of 8/32, batch 1,
//! fully padded key rows). Tolerance: rel 1e-6 per element (see `testing::gradcheck`).

use engram::ops;
use engram::testing::{assert_gradcheck, gradcheck, Rng, RngExt};
use engram::{Tape, Tensor};

fn ids(v: Vec<i64>, shape: &[usize]) -> Tensor {
    Tensor::from_ids(v, shape).unwrap()
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut r = Rng::new(1);
    for &(b, m, k, n) in &[(1, 1, 1, 1), (2, 3, 5, 7), (3, 9, 17, 33)] {
        let a = r.param(&[b, m, k]);
        let w = r.param(&[b, k, n]);
        assert_gradcheck("matmul", &[a.clone(), w], 1, |t, x| ops::matmul(t, &x[0], &x[1]));
        let w2 = r.param(&[k, n]);
        assert_gradcheck("matmul broadcast", &[a, w2], 2, |t, x| ops::matmul(t, &x[0], &x[1]));
    }
}

#[test]
fn matmul_nt_batched() {
    let mut r = Rng::new(2);
    let a = r.param(&[2, 2, 5, 9]);
    let b = r.param(&[2, 2, 7, 9]);
    assert_gradcheck("matmul_nt", &[a, b], 3, |t, x| ops::matmul_nt(t, &x[0], &x[1]));
}

#[test]
fn linear_with_and_without_bias() {
    let mut r = Rng::new(3);
    let x = r.param(&[2, 3, 13]);
    let w = r.param(&[7, 13]);
    let b = r.param(&[7]);
    assert_gradcheck("linear", &[x.clone(), w.clone(), b], 4, |t, v| ops::linear(t, &v[0], &v[1], Some(&v[2])));
    assert_gradcheck("linear no bias", &[x, w], 5, |t, v| ops::linear(t, &v[0], &v[1], None));
}

#[test]
fn elementwise_ops() {
    let mut r = Rng::new(4);
    let a = r.param(&[3, 11]);
    let b = r.param(&[3, 11]);
    let bias = r.param(&[11]);
    assert_gradcheck("add", &[a.clone(), b], 6, |t, v| ops::add(t, &v[0], &v[1]));
    assert_gradcheck("bias_add", &[a.clone(), bias], 7, |t, v| ops::bias_add(t, &v[0], &v[1]));
    assert_gradcheck("scale", std::slice::from_ref(&a), 8, |t, v| ops::scale(t, &v[0], -1.7));
    assert_gradcheck("gelu", std::slice::from_ref(&a), 9, |t, v| ops::gelu(t, &v[0]));
    assert_gradcheck("gelu_tanh", std::slice::from_ref(&a), 10, |t, v| ops::gelu_tanh(t, &v[0]));
    assert_gradcheck("tanh", std::slice::from_ref(&a), 11, |t, v| ops::tanh(t, &v[0]));
    // Random normals are never within the 4h stencil of the kink at 0 here (checked: min |a| > 4e-3).
    assert!(a.to_f64_vec().iter().all(|x| x.abs() > 4e-3));
    assert_gradcheck("relu", std::slice::from_ref(&a), 12, |t, v| ops::relu(t, &v[0]));
    let x = r.param(&[2, 5, 7]);
    assert_gradcheck("token (CLS)", std::slice::from_ref(&x), 13, |t, v| ops::token(t, &v[0], 0));
    assert_gradcheck("token (last)", &[x], 14, |t, v| ops::token(t, &v[0], 4));
}

#[test]
fn add_with_aliased_inputs_accumulates_both() {
    let mut r = Rng::new(5);
    let a = r.param(&[4, 3]);
    assert_gradcheck("a + a", &[a], 12, |t, v| ops::add(t, &v[0], &v[0]));
}

#[test]
fn layer_norm_awkward_widths() {
    let mut r = Rng::new(6);
    for &(rows, c) in &[(1, 1), (1, 7), (5, 33)] {
        let x = r.param(&[rows, c]);
        let w = r.param(&[c]);
        let b = r.param(&[c]);
        // A width of 1 normalises to exactly 0: the x-gradient is 0, which the check also verifies.
        assert_gradcheck("layer_norm", &[x, w, b], 13, |t, v| ops::layer_norm(t, &v[0], &v[1], &v[2], 1e-5));
    }
}

#[test]
fn softmax_rows() {
    let mut r = Rng::new(7);
    let x = r.param(&[2, 3, 37]);
    assert_gradcheck("softmax", &[x], 14, |t, v| ops::softmax(t, &v[0]));
}

#[test]
fn attention_with_padding_and_fully_masked_row() {
    let mut r = Rng::new(8);
    let (b, nh, t, hs) = (3, 2, 5, 7);
    let q = r.param(&[b, nh, t, hs]);
    let k = r.param(&[b, nh, t, hs]);
    let v = r.param(&[b, nh, t, hs]);
    // Batch 0: no padding; batch 1: two padded keys; batch 2: every key padded.
    let mask = ids(vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &[b, t]);
    assert_gradcheck("attention", &[q.clone(), k.clone(), v.clone()], 15, |tp, x| {
        ops::attention(tp, &x[0], &x[1], &x[2], Some(&mask), 0.37, 0.0)
    });
    assert_gradcheck("attention no mask", &[q.clone(), k, v], 16, |tp, x| ops::attention(tp, &x[0], &x[1], &x[2], None, 0.5, 0.0));
    // q = k = v aliasing (self-attention on one tensor) must sum all three contributions.
    assert_gradcheck("attention aliased", std::slice::from_ref(&q), 17, |tp, x| ops::attention(tp, &x[0], &x[0], &x[0], Some(&mask), 0.3, 0.0));
    // Dropout of the probabilities (seeded mask, fixed between evaluations) with padding.
    let (k, v) = (r.param(&[b, nh, t, hs]), r.param(&[b, nh, t, hs]));
    assert_gradcheck("attention dropout", &[q, k, v], 19, |tp, x| ops::attention(tp, &x[0], &x[1], &x[2], Some(&mask), 0.45, 0.3));
}

#[test]
fn attention_cross_lengths_batch_one() {
    let mut r = Rng::new(9);
    let q = r.param(&[1, 1, 3, 5]);
    let k = r.param(&[1, 1, 6, 5]);
    let v = r.param(&[1, 1, 6, 5]);
    let mask = ids(vec![1, 0, 1, 1, 0, 1], &[1, 6]);
    assert_gradcheck("attention Tq≠Tk", &[q, k, v], 18, |tp, x| ops::attention(tp, &x[0], &x[1], &x[2], Some(&mask), 0.8, 0.0));
}

/// Shapes past the CPU kernel's 32-column blocks: Tk = 67 (two blocks + 3), HS = 33 (one + 1),
/// an odd number of rows in every vector–matrix product, padding and probability dropout.
#[test]
fn attention_wide_rows_blocks_and_tails() {
    let mut r = Rng::new(10);
    let (tq, tk, hs) = (3, 67, 33);
    let q = r.param(&[1, 2, tq, hs]);
    let k = r.param(&[1, 2, tk, hs]);
    let v = r.param(&[1, 2, tk, hs]);
    let mask = ids((0..tk as i64).map(|j| i64::from(j % 5 != 3)).collect(), &[1, tk]);
    assert_gradcheck("attention wide", &[q.clone(), k.clone(), v.clone()], 20, |tp, x| {
        ops::attention(tp, &x[0], &x[1], &x[2], Some(&mask), 0.21, 0.0)
    });
    assert_gradcheck("attention wide dropout", &[q, k, v], 21, |tp, x| ops::attention(tp, &x[0], &x[1], &x[2], Some(&mask), 0.21, 0.25));
}

#[test]
fn embedding_repeated_ids_and_padding_idx() {
    let mut r = Rng::new(10);
    let table = r.param(&[6, 9]);
    let idx = ids(vec![1, 3, 1, 0, 5, 3], &[2, 3]);
    assert_gradcheck("embedding", std::slice::from_ref(&table), 19, |t, v| ops::embedding(t, &idx, &v[0], None));
    // With padding_idx the row gets no gradient: finite differences see it, so exclude it by
    // checking the analytic gradient directly.
    let tape = Tape::training(0);
    let y = ops::embedding(&tape, &idx, &table, Some(0)).unwrap();
    let g = tape.backward_with(&y, &Tensor::from_vec(Rng::new(1).normal_vec(y.numel()), y.shape()).unwrap()).unwrap();
    let d = g.get::<f64>(&table).unwrap();
    assert!(d[..9].iter().all(|&x| x == 0.0), "padding row got a gradient");
    assert!(d[9..18].iter().any(|&x| x != 0.0), "row 1 got no gradient");
}

#[test]
fn dropout_seeded_mask() {
    let mut r = Rng::new(11);
    let x = r.param(&[4, 13]);
    assert_gradcheck("dropout", &[x], 20, |t, v| ops::dropout(t, &v[0], 0.3));
}

#[test]
fn cross_entropy_with_ignore_index() {
    let mut r = Rng::new(12);
    let logits = r.param(&[2, 3, 5]);
    let targets = ids(vec![4, -100, 0, 2, -100, 1], &[2, 3]);
    assert_gradcheck("cross_entropy", std::slice::from_ref(&logits), 21, |t, v| ops::cross_entropy(t, &v[0], &targets));
    let one = ids(vec![3], &[1]);
    let l1 = r.param(&[1, 5]);
    assert_gradcheck("cross_entropy N=1", &[l1], 22, |t, v| ops::cross_entropy(t, &v[0], &one));
    assert_gradcheck("cross_entropy label smoothing 0.2", &[logits], 26, |t, v| ops::cross_entropy_smoothed(t, &v[0], &targets, 0.2));
}

#[test]
fn cross_entropy_with_class_weights() {
    let mut r = Rng::new(31);
    let logits = r.param(&[2, 3, 5]);
    // Unequal weights, one class weighing 0 (class 3: never a target here, so only the smoothing
    // term sees it; class 1 is a target and weighs 0.25).
    let w = [0.5, 0.25, 2.0, 0.0, 1.5];
    let targets = ids(vec![4, -100, 0, 2, 1, 2], &[2, 3]);
    for eps in [0.0, 0.15] {
        assert_gradcheck(&format!("cross_entropy weighted ε={eps}"), std::slice::from_ref(&logits), 32, |t, v| {
            ops::cross_entropy_weighted(t, &v[0], &targets, &w, eps)
        });
    }
}

#[test]
fn elementwise_losses_against_float_targets() {
    let mut r = Rng::new(23);
    let logits = r.param(&[3, 4]);
    // Multi-hot and soft targets, as a multi-label head sees them.
    let y = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0, 0.25, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0f64], &[3, 4]).unwrap();
    assert_gradcheck("binary_cross_entropy_with_logits", std::slice::from_ref(&logits), 24, |t, v| {
        ops::binary_cross_entropy_with_logits(t, &ops::scale(t, &v[0], 3.0)?, &y)
    });
    // A weight per label on the positive term (one weighing 0, one below 1).
    let pw = [2.5, 0.0, 0.5, 7.0];
    assert_gradcheck("binary_cross_entropy_with_logits pos_weight", std::slice::from_ref(&logits), 27, |t, v| {
        ops::binary_cross_entropy_with_logits_weighted(t, &ops::scale(t, &v[0], 3.0)?, &y, &pw)
    });
    let target = Tensor::from_vec(r.normal_vec(12), &[3, 4]).unwrap();
    assert_gradcheck("mse_loss", &[logits], 25, |t, v| ops::mse_loss(t, &v[0], &target));
}

#[test]
fn mean_pool_with_padding() {
    let mut r = Rng::new(13);
    let x = r.param(&[3, 4, 5]);
    let mask = ids(vec![1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &[3, 4]);
    assert_gradcheck("mean_pool", &[x], 23, |t, v| ops::mean_pool(t, &v[0], &mask));
}

#[test]
fn layout_ops() {
    let mut r = Rng::new(14);
    let x = r.param(&[2, 3, 12]);
    assert_gradcheck("reshape", std::slice::from_ref(&x), 24, |t, v| {
        let y = ops::reshape(t, &v[0], &[6, 12])?;
        ops::tanh(t, &y)
    });
    assert_gradcheck("split_heads", std::slice::from_ref(&x), 25, |t, v| ops::split_heads(t, &v[0], 4));
    let h = r.param(&[2, 4, 3, 3]);
    assert_gradcheck("merge_heads", &[h], 26, |t, v| ops::merge_heads(t, &v[0]));
    // split then merge is the identity
    let tape = Tape::inference();
    let back = ops::merge_heads(&tape, &ops::split_heads(&tape, &x, 3).unwrap()).unwrap();
    assert_eq!(back.to_f64_vec(), x.to_f64_vec());
}

/// The check itself can fail: a chain whose loss is flat in an input that does get an
/// analytic gradient elsewhere, and a deliberate wrong comparison, must both be caught.
#[test]
fn gradcheck_catches_a_wrong_gradient() {
    let mut r = Rng::new(15);
    let x = r.param(&[3, 4]);
    // f(x) = gelu(x) evaluated analytically, but the numeric side sees tanh(x): mismatch.
    let flip = std::cell::Cell::new(0u32);
    let res = gradcheck(&[x], 27, |t, v| {
        let n = flip.get();
        flip.set(n + 1);
        if n == 0 {
            ops::gelu(t, &v[0])
        } else {
            ops::tanh(t, &v[0])
        }
    })
    .unwrap();
    assert!(res.max_rel_err > 1e-2, "gradcheck did not notice a wrong gradient: {res:?}");
}

#[test]
fn concat_and_narrow_on_every_axis() {
    let mut r = Rng::new(15);
    let a = r.param(&[2, 3, 5]);
    let b = r.param(&[2, 1, 5]);
    let c = r.param(&[2, 4, 5]);
    assert_gradcheck("concat axis 1", &[a.clone(), b, c], 15, |t, v| ops::concat(t, &[&v[0], &v[1], &v[2]], 1));
    let d = r.param(&[3, 3, 5]);
    assert_gradcheck("concat axis 0", &[a.clone(), d], 16, |t, v| ops::concat(t, &[&v[0], &v[1]], 0));
    let e = r.param(&[2, 3, 2]);
    assert_gradcheck("concat axis 2", &[a.clone(), e], 17, |t, v| ops::concat(t, &[&v[0], &v[1]], 2));
    // The same tensor twice: both bands accumulate into one gradient.
    assert_gradcheck("concat aliased", std::slice::from_ref(&a), 18, |t, v| ops::concat(t, &[&v[0], &v[0]], 1));
    assert_gradcheck("narrow axis 1", std::slice::from_ref(&a), 19, |t, v| ops::narrow(t, &v[0], 1, 1, 2));
    assert_gradcheck("narrow axis 0", std::slice::from_ref(&a), 20, |t, v| ops::narrow(t, &v[0], 0, 1, 1));
    assert_gradcheck("narrow axis 2", std::slice::from_ref(&a), 21, |t, v| ops::narrow(t, &v[0], 2, 4, 1));
    // narrow ∘ concat: the splice the memory model does (read back the middle band).
    let m = r.param(&[2, 2, 5]);
    assert_gradcheck("splice", &[a, m], 22, |t, v| {
        let x = ops::concat(t, &[&ops::narrow(t, &v[0], 1, 0, 1)?, &v[1], &ops::narrow(t, &v[0], 1, 1, 2)?], 1)?;
        ops::narrow(t, &x, 1, 1, 3)
    });
}

#[test]
fn concat_and_narrow_values_and_bad_shapes() {
    let t = Tape::inference();
    let a = Tensor::from_vec((0..6).map(|x| x as f32).collect::<Vec<_>>(), &[2, 3]).unwrap();
    let b = Tensor::from_vec(vec![10f32, 11.0], &[2, 1]).unwrap();
    let c = ops::concat(&t, &[&a, &b], 1).unwrap();
    assert_eq!(c.shape(), &[2, 4]);
    assert_eq!(c.to_f64_vec(), vec![0.0, 1.0, 2.0, 10.0, 3.0, 4.0, 5.0, 11.0]);
    let n = ops::narrow(&t, &c, 1, 2, 2).unwrap();
    assert_eq!(n.to_f64_vec(), vec![2.0, 10.0, 5.0, 11.0]);
    let z = ops::narrow(&t, &c, 0, 2, 0).unwrap();
    assert_eq!(z.shape(), &[0, 4]);
    assert!(ops::concat(&t, &[&a, &b], 0).is_err());
    assert!(ops::concat(&t, &[], 0).is_err());
    assert!(ops::narrow(&t, &a, 1, 2, 2).is_err());
    assert!(ops::narrow(&t, &a, 2, 0, 1).is_err());
}

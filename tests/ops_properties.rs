//! Properties that have no PyTorch value to compare with: the dropout mask (our own counter-based
//! generator), the tape's bookkeeping, and clear errors (never panics) on bad input.

use engram::testing::Rng;
use engram::{ops, DType, Error, Tape, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = Rng::new(seed).normal_vec(n).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// f64 tensor with normal entries, tracked.
fn randn64(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n), shape).unwrap().requires_grad()
}

#[test]
fn attention_dropout_is_the_composite_with_the_same_mask() {
    // The fused op with dropout_p must equal matmul → scale → softmax → ops::dropout → matmul on a
    // tape with the same seed (the probabilities' flat (B, NH, Tq, Tk) index is dropout's index), in
    // the output and in every input gradient; and dropout must act only on a training tape.
    let (b, nh, tq, tk, hs, p) = (2, 3, 5, 6, 4, 0.4);
    let (q, k, v) = (randn64(&[b, nh, tq, hs], 1), randn64(&[b, nh, tk, hs], 2), randn64(&[b, nh, tk, hs], 3));
    let dy = Tensor::from_vec(Rng::new(4).normal_vec(b * nh * tq * hs), &[b, nh, tq, hs]).unwrap();
    let composite = |tape: &Tape| -> Tensor {
        let s = ops::scale(tape, &ops::matmul_nt(tape, &q, &k).unwrap(), 0.7).unwrap();
        let pr = ops::dropout(tape, &ops::softmax(tape, &s).unwrap(), p).unwrap();
        ops::matmul(tape, &pr, &v).unwrap()
    };
    let grads = |fused: bool| {
        let tape = Tape::training(11);
        let y = if fused { ops::attention(&tape, &q, &k, &v, None, 0.7, p).unwrap() } else { composite(&tape) };
        let g = tape.backward_with(&y, &dy).unwrap();
        let gv = |t: &Tensor| g.get::<f64>(t).unwrap().to_vec();
        (y.to_f64_vec(), gv(&q), gv(&k), gv(&v))
    };
    let (fy, fq, fk, fv) = grads(true);
    let (cy, cq, ck, cv) = grads(false);
    let dropped = {
        let tape = Tape::training(11);
        let s = ops::scale(&tape, &ops::matmul_nt(&tape, &q, &k).unwrap(), 0.7).unwrap();
        ops::dropout(&tape, &ops::softmax(&tape, &s).unwrap(), p).unwrap().to_f64_vec().iter().filter(|&&x| x == 0.0).count()
    };
    assert!(dropped > 0 && dropped < b * nh * tq * tk / 2, "{dropped} dropped: the test must exercise the mask");
    for (name, f, c) in [("out", &fy, &cy), ("dq", &fq, &cq), ("dk", &fk, &ck), ("dv", &fv, &cv)] {
        engram::testing::assert_close(name, f, c, 1e-12, 1e-10);
    }
    // Inference: no dropout; equals the op with dropout_p = 0.
    let inf = ops::attention(&Tape::inference(), &q, &k, &v, None, 0.7, p).unwrap().to_f64_vec();
    let plain = ops::attention(&Tape::inference(), &q, &k, &v, None, 0.7, 0.0).unwrap().to_f64_vec();
    assert_eq!(inf, plain);
    assert_ne!(inf, fy);
    let e = ops::attention(&Tape::inference(), &q, &k, &v, None, 0.7, 1.0).unwrap_err().to_string();
    assert!(e.contains("attention") && e.contains("dropout_p"), "{e}");
}

#[test]
fn dropout_drops_p_scales_the_rest_and_replays() {
    let x = randn(&[64, 1000], 1).requires_grad();
    let p = 0.1;
    let run = |seed| {
        let tape = Tape::training(seed);
        ops::dropout(&tape, &x, p).unwrap().to_f64_vec()
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a, b, "same tape seed must give the same mask");
    assert_ne!(a, c, "another seed must give another mask");
    let xs = x.to_f64_vec();
    let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
    // 64 000 Bernoulli(0.1) draws: σ ≈ 0.0012, so ±0.006 is a 5σ band.
    assert!((dropped - p).abs() < 0.006, "dropped fraction {dropped}");
    for (y, x) in a.iter().zip(&xs) {
        assert!(*y == 0.0 || (y - x / (1.0 - p)).abs() <= 1e-6 * (1.0 + x.abs()));
    }
    // Two dropouts on one tape draw different masks.
    let tape = Tape::training(5);
    let m1 = ops::dropout(&tape, &x, p).unwrap().to_f64_vec();
    let m2 = ops::dropout(&tape, &x, p).unwrap().to_f64_vec();
    assert_ne!(m1, m2);
    // Inference: identity, nothing recorded.
    let tape = Tape::inference();
    let y = ops::dropout(&tape, &x, p).unwrap();
    assert_eq!(y.to_f64_vec(), xs);
    assert!(tape.is_empty());
    assert!(matches!(ops::dropout(&tape, &x, 1.0), Err(Error::Value { .. })));
}

/// Inference keeps a linear's weight packed with the tensor; the packed copy must give the same
/// output as the training path, and must not survive an in-place update of the weight.
#[test]
fn packed_inference_weights_match_and_follow_updates() {
    let (x, mut w, b) = (randn(&[37, 45], 31), randn(&[50, 45], 32).requires_grad(), randn(&[50], 33));
    let fresh = |x: &Tensor, w: &Tensor| {
        // A training tape takes the unpacked path (and a fresh tensor has no packed copy).
        ops::linear(&Tape::training(1), x, &w.detach().requires_grad(), Some(&b)).unwrap().to_f64_vec()
    };
    let want = fresh(&x, &w);
    for _ in 0..2 {
        // The second call reads the kept packed weight.
        let got = ops::linear(&Tape::inference(), &x, &w, Some(&b)).unwrap().to_f64_vec();
        assert_eq!(got, want, "packed and unpacked linear differ");
    }
    w.update::<f32>(|v| v.iter_mut().enumerate().for_each(|(i, x)| *x = *x * 0.5 + (i % 7) as f32 * 0.01)).unwrap();
    let want2 = fresh(&x, &w);
    assert_ne!(want, want2);
    let got2 = ops::linear(&Tape::inference(), &x, &w, Some(&b)).unwrap().to_f64_vec();
    assert_eq!(got2, want2, "a stale packed weight survived update()");
}

#[test]
fn inference_tape_records_and_saves_nothing() {
    let w = randn(&[8, 5], 2).requires_grad();
    let x = randn(&[3, 5], 3);
    let tape = Tape::inference();
    let y = ops::gelu(&tape, &ops::linear(&tape, &x, &w, None).unwrap()).unwrap();
    assert!(tape.is_empty());
    assert!(!y.is_tracked());
    assert!(matches!(tape.backward(&ops::scale(&tape, &y, 1.0).unwrap()), Err(Error::Autograd(_))));
}

#[test]
fn training_tape_records_only_what_touches_tracked_tensors_and_frees_nodes() {
    let w = randn(&[8, 5], 4).requires_grad();
    let x = randn(&[3, 5], 5);
    let tape = Tape::training(0);
    let frozen = ops::tanh(&tape, &x).unwrap(); // no tracked input: not recorded
    let y = ops::linear(&tape, &frozen, &w, None).unwrap();
    let t = Tensor::from_ids(vec![1, 2, 3], &[3]).unwrap();
    let loss = ops::cross_entropy(&tape, &y, &t).unwrap();
    assert_eq!(tape.op_names(), vec!["linear", "cross_entropy"]);
    let g = tape.backward(&loss).unwrap();
    assert!(tape.is_empty());
    assert_eq!(g.len(), 1, "only the parameter keeps a gradient");
    assert!(g.get::<f32>(&w).is_some());
    assert!(g.get::<f32>(&x).is_none());
}

#[test]
fn residual_and_tied_weights_accumulate() {
    // y = x·W + x·W (two uses of W and of x) must give twice the single-use gradient.
    let w = randn(&[4, 4], 6).requires_grad();
    let x = randn(&[2, 4], 7).requires_grad();
    let single = {
        let tape = Tape::training(0);
        let y = ops::matmul(&tape, &x, &w).unwrap();
        let g = tape.backward_with(&y, &randn(&[2, 4], 8)).unwrap();
        g.get::<f32>(&w).unwrap().to_vec()
    };
    let tape = Tape::training(0);
    let y1 = ops::matmul(&tape, &x, &w).unwrap();
    let y2 = ops::matmul(&tape, &x, &w).unwrap();
    let y = ops::add(&tape, &y1, &y2).unwrap();
    let g = tape.backward_with(&y, &randn(&[2, 4], 8)).unwrap();
    for (a, b) in g.get::<f32>(&w).unwrap().iter().zip(&single) {
        assert!((a - 2.0 * b).abs() <= 1e-5 * (1.0 + b.abs()));
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_op_and_shapes() {
    let tape = Tape::training(0);
    let a = randn(&[2, 3], 1);
    let b = randn(&[4, 5], 2);
    let msg = |e: Error| e.to_string();
    let e = msg(ops::matmul(&tape, &a, &b).unwrap_err());
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = msg(ops::linear(&tape, &a, &b, None).unwrap_err());
    assert!(e.contains("linear"), "{e}");
    let e = msg(ops::add(&tape, &a, &b).unwrap_err());
    assert!(e.contains("add"), "{e}");
    let table = randn(&[5, 3], 3);
    let ids = Tensor::from_ids(vec![0, 7], &[2]).unwrap();
    let e = msg(ops::embedding(&tape, &ids, &table, None).unwrap_err());
    assert!(e.contains("embedding") && e.contains('7'), "{e}");
    let logits = randn(&[2, 3], 4);
    let bad = Tensor::from_ids(vec![0, 3], &[2]).unwrap();
    let e = msg(ops::cross_entropy(&tape, &logits, &bad).unwrap_err());
    assert!(e.contains("cross_entropy") && e.contains("target 3"), "{e}");
    let q = randn(&[1, 2, 3, 4], 5);
    let mask = Tensor::from_ids(vec![1, 2, 1], &[1, 3]).unwrap();
    let e = msg(ops::attention(&tape, &q, &q, &q, Some(&mask), 1.0, 0.0).unwrap_err());
    assert!(e.contains("attention") && e.contains("0 (padding) or 1"), "{e}");
    let empty = Tensor::from_vec(Vec::<f32>::new(), &[1, 2, 0, 4]).unwrap();
    let e = msg(ops::attention(&tape, &empty, &q, &q, None, 1.0, 0.0).unwrap_err());
    assert!(e.contains("attention") && e.contains("non-zero"), "{e}");
    let e = msg(ops::split_heads(&tape, &randn(&[1, 2, 10], 6), 3).unwrap_err());
    assert!(e.contains("split_heads"), "{e}");
    let e = msg(ops::gelu(&tape, &ids).unwrap_err());
    assert!(e.contains("gelu") && e.contains("I64"), "{e}");
    let e = msg(Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).unwrap_err());
    assert!(e.contains("[2, 3]") && e.contains('5'), "{e}");
    let e = msg(ops::matmul(&tape, &a, &randn(&[3, 2], 7).to_dtype(DType::F64).unwrap()).unwrap_err());
    assert!(e.contains("matmul") && e.contains("F64"), "{e}");
}

/// `Tape::held_bytes` counts what backwards save besides their inputs: the fused attention's
/// probabilities (B·NH·Tq·Tk floats) and layer norm's row statistics, each input tensor once.
#[test]
fn held_bytes_counts_saved_probabilities_and_statistics() {
    let (b, nh, t, hs) = (2usize, 3usize, 5usize, 4usize);
    let r = |n: usize, s: u64| Tensor::from_vec(engram::testing::Rng::new(s).normal_vec(n).into_iter().map(|x| x as f32).collect::<Vec<f32>>(), &[b, nh, t, hs]).unwrap().requires_grad();
    let (q, k, v) = (r(b * nh * t * hs, 1), r(b * nh * t * hs, 2), r(b * nh * t * hs, 3));
    let tape = Tape::training(0);
    let o = ops::attention(&tape, &q, &k, &v, None, 0.5, 0.0).unwrap();
    let inputs = 3 * b * nh * t * hs * 4;
    assert_eq!(tape.held_bytes(), inputs + b * nh * t * t * 4, "q, k, v and the probabilities");
    let x = ops::reshape(&tape, &o, &[b * nh * t, hs]).unwrap();
    let (w, bias) = (Tensor::from_vec(vec![1f32; hs], &[hs]).unwrap().requires_grad(), Tensor::from_vec(vec![0f32; hs], &[hs]).unwrap().requires_grad());
    let before = tape.held_bytes();
    ops::layer_norm(&tape, &x, &w, &bias, 1e-5).unwrap();
    // x (the reshaped o: a new tensor), w, bias, and the mean and 1/std of each row.
    assert_eq!(tape.held_bytes(), before + (b * nh * t * hs + 2 * hs) * 4 + 2 * b * nh * t * 4);
}

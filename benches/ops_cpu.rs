//! Forward and backward wall time of single CPU ops at the sizes of a MiniLM fine-tuning step
//! (batch 32, sequence 128): attention over (32, 12, 128, 32) with padding mask and probability
//! dropout, and the pointwise/row-wise ops on the (4096, 1536) intermediate activation. Best of
//! the repetitions (each on a fresh training tape), with GFLOP/s for attention. The per-op share
//! of a whole step is `cargo bench --bench bert_cpu -- --profile`.
//!
//!   cargo bench --bench ops_cpu [-- --reps N]

use std::time::Instant;

use engram::{ops, Result, Tape, Tensor};

fn rand(n: usize, seed: u64, shape: &[usize]) -> Tensor {
    let v: Vec<f32> = engram::testing::Rng::new(seed).normal_vec(n).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(v, shape).expect("shape")
}

/// One op applied on a tape.
type OpFn<'a> = dyn Fn(&Tape) -> Result<Tensor> + 'a;

/// Best forward and backward ms over `reps` runs of `f` on a training tape, upstream gradient `dy`.
fn time(reps: usize, dy: &Tensor, f: impl Fn(&Tape) -> Result<Tensor>) -> (f64, f64) {
    let (mut fw, mut bw) = (f64::MAX, f64::MAX);
    for _ in 0..reps + 1 {
        let tape = Tape::training(3);
        let t0 = Instant::now();
        let y = f(&tape).expect("forward");
        fw = fw.min(t0.elapsed().as_secs_f64() * 1e3);
        let t1 = Instant::now();
        std::hint::black_box(tape.backward_with(&y, dy).expect("backward"));
        bw = bw.min(t1.elapsed().as_secs_f64() * 1e3);
    }
    (fw, bw)
}

fn main() {
    engram::util::tune_allocator(); // as the CLI does
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.iter().position(|a| a == "--reps").and_then(|i| args.get(i + 1)).map_or(5, |s| s.parse().expect("--reps N"));
    println!("engram CPU ops ({} threads), best of {reps}", rayon::current_num_threads());
    println!("{:<34} {:>9} {:>9} {:>12}", "op", "fwd ms", "bwd ms", "fwd GFLOP/s");

    let (b, nh, t, hs) = (32, 12, 128, 32);
    let n = b * nh * t * hs;
    let (q, k, v) = (rand(n, 1, &[b, nh, t, hs]).requires_grad(), rand(n, 2, &[b, nh, t, hs]).requires_grad(), rand(n, 3, &[b, nh, t, hs]).requires_grad());
    // Every row padded after a different length, as in a real batch.
    let mask = Tensor::from_ids((0..b * t).map(|i| i64::from(i % t < t - 3 * (i / t))).collect(), &[b, t]).expect("mask");
    let dy = rand(n, 4, &[b, nh, t, hs]);
    let flops = 4.0 * (b * nh * t * t * hs) as f64; // q·kᵀ and p·v
    for (name, p) in [("attention (32,12,128,32) mask", 0.0), ("attention ... + dropout 0.1", 0.1)] {
        let (fw, bw) = time(reps, &dy, |tp| ops::attention(tp, &q, &k, &v, Some(&mask), 0.177, p));
        println!("{name:<34} {fw:>9.2} {bw:>9.2} {:>12.1}", flops / fw / 1e6);
    }
    let mut best = f64::MAX;
    for _ in 0..reps + 1 {
        let t0 = Instant::now();
        std::hint::black_box(ops::attention(&Tape::inference(), &q, &k, &v, Some(&mask), 0.177, 0.0).expect("forward"));
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("{:<34} {best:>9.2} {:>9} {:>12.1}", "attention, inference tape", "-", flops / best / 1e6);

    let (rows, c) = (4096, 1536);
    let x = rand(rows * c, 5, &[rows, c]).requires_grad();
    let dy = rand(rows * c, 6, &[rows, c]);
    let (w, bias) = (rand(c, 7, &[c]).requires_grad(), rand(c, 8, &[c]).requires_grad());
    let cases: [(&str, Box<OpFn>); 4] = [
        ("gelu (4096, 1536)", Box::new(|tp| ops::gelu(tp, &x))),
        ("dropout 0.1 (4096, 1536)", Box::new(|tp| ops::dropout(tp, &x, 0.1))),
        ("add (4096, 1536)", Box::new(|tp| ops::add(tp, &x, &x))),
        ("layer_norm (4096, 1536)", Box::new(|tp| ops::layer_norm(tp, &x, &w, &bias, 1e-12))),
    ];
    for (name, f) in cases {
        let (fw, bw) = time(reps, &dy, f);
        println!("{name:<34} {fw:>9.2} {bw:>9.2} {:>12}", "-");
    }
}

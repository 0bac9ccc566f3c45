//! Test support shared by unit and integration tests: a seeded RNG, tolerant comparison, and the
//! f64 central-finite-difference gradient check. Not part of the stable API.

use crate::autograd::Tape;
use crate::error::Result;
use crate::tensor::Tensor;

pub use crate::util::Rng;

/// Test helpers on top of [`Rng`].
pub trait RngExt {
    /// A fresh f64 tensor of standard normals that requires grad.
    fn param(&mut self, shape: &[usize]) -> Tensor;
}

impl RngExt for Rng {
    fn param(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(self.normal_vec(n), shape).expect("shape").requires_grad()
    }
}

/// Result of a gradient check: the worst element and where it was.
#[derive(Debug)]
pub struct GradCheck {
    pub max_rel_err: f64,
    pub worst: String,
}

/// Compare the analytic gradient of `L = Σ g ⊙ f(inputs)` (random upstream `g`) with f64 central
/// differences (four-point), for every element of every tracked input. The error per element is
/// `|a − n| / max(|a|, |n|, 1e-3)`; the floor keeps the ~1e-10 absolute noise of the differences
/// from dominating on near-zero gradients. Inputs must be f64. `f` runs on a training tape with a
/// fixed seed, so dropout masks repeat between evaluations.
pub fn gradcheck(inputs: &[Tensor], seed: u64, f: impl Fn(&Tape, &[Tensor]) -> Result<Tensor>) -> Result<GradCheck> {
    // Four-point stencil: truncation O(h⁴) lets h be large, which keeps the round-off of the
    // loss (eps·|L|/h) near 1e-11 instead of the 1e-9 a two-point difference at h = 1e-5 gives.
    const H: f64 = 1e-3;
    let tape = Tape::training(seed);
    let out = f(&tape, inputs)?;
    let mut rng = Rng::new(seed ^ 0x5eed);
    let g = rng.normal_vec(out.numel());
    let gt = Tensor::from_vec(g.clone(), out.shape())?;
    let grads = tape.backward_with(&out, &gt)?;
    let loss = |xs: &[Tensor]| -> Result<f64> {
        let tape = Tape::training(seed);
        let y = f(&tape, xs)?;
        Ok(y.to_f64_vec().iter().zip(&g).map(|(a, b)| a * b).sum())
    };
    let mut worst = GradCheck { max_rel_err: 0.0, worst: "no tracked inputs".into() };
    for (i, x) in inputs.iter().enumerate() {
        if !x.is_tracked() {
            continue;
        }
        let analytic = grads.get::<f64>(x).map(|s| s.to_vec());
        let base = x.to_f64_vec();
        for j in 0..base.len() {
            let eval = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += d;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, x.shape())?.requires_grad();
                loss(&xs)
            };
            let numeric = (8.0 * (eval(H)? - eval(-H)?) - (eval(2.0 * H)? - eval(-2.0 * H)?)) / (12.0 * H);
            let a = analytic.as_ref().map_or(0.0, |v| v[j]);
            if analytic.is_none() && numeric.abs() > 1e-8 {
                worst = GradCheck { max_rel_err: f64::INFINITY, worst: format!("input {i} received no gradient (numeric {numeric:e})") };
                return Ok(worst);
            }
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-3);
            if err > worst.max_rel_err || worst.worst == "no tracked inputs" {
                worst = GradCheck { max_rel_err: err, worst: format!("input {i} element {j}: analytic {a:e}, numeric {numeric:e}") };
            }
        }
    }
    Ok(worst)
}

/// Assert `gradcheck` passes at rel 1e-6, printing the worst element on failure.
pub fn assert_gradcheck(name: &str, inputs: &[Tensor], seed: u64, f: impl Fn(&Tape, &[Tensor]) -> Result<Tensor>) {
    let r = gradcheck(inputs, seed, f).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(r.max_rel_err <= 1e-6, "{name}: gradient check failed, rel err {:e} at {}", r.max_rel_err, r.worst);
}

/// `|got − want| ≤ atol + rtol·|want|` elementwise, with a message naming the first failure.
pub fn assert_close(name: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length {} vs {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs() && g.is_finite() == w.is_finite(),
            "{name}[{i}]: got {g:e}, want {w:e} (|diff| {:e})",
            (g - w).abs()
        );
    }
}

/// The model a benchmark runs on: `ENGRAM_MODEL_DIR` if set, else the installed all-MiniLM-L6-v2
/// under `root`, else the committed tiny BERT (a smoke run).
pub fn bench_model_dir(root: &std::path::Path) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("ENGRAM_MODEL_DIR") {
        return dir.into();
    }
    let minilm = root.join("weights/cache/all-MiniLM-L6-v2");
    if minilm.join("model.safetensors").is_file() {
        minilm
    } else {
        root.join("weights/tiny-bert")
    }
}

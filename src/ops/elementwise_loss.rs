//! Mean elementwise losses against float targets: `binary_cross_entropy_with_logits` (multi-label
//! classification) and `mse_loss` (regression) — the two losses transformers'
//! `*ForSequenceClassification` uses besides cross-entropy (`problem_type`
//! `multi_label_classification` / `regression`). One family: the same mean reduction, the same
//! kernels with a different pointwise term.

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// Which pointwise term (the value passed to the kernels as `kind`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `max(x, 0) − x·y + log(1 + e^{−|x|})`; d/dx = σ(x) − y.
    Bce = 0,
    /// `(x − y)²`; d/dx = 2(x − y).
    Mse = 1,
}

impl Kind {
    fn op(self) -> &'static str {
        match self {
            Kind::Bce => "binary_cross_entropy_with_logits",
            Kind::Mse => "mse_loss",
        }
    }

    fn term<T: Float>(self, x: T, y: T) -> T {
        match self {
            Kind::Bce => x.max(T::ZERO) - x * y + (T::ONE + (-x.max(-x)).exp()).ln(),
            Kind::Mse => (x - y) * (x - y),
        }
    }

    fn derivative<T: Float>(self, x: T, y: T) -> T {
        match self {
            Kind::Bce => T::ONE / (T::ONE + (-x).exp()) - y,
            Kind::Mse => T::from_f64(2.0) * (x - y),
        }
    }
}

/// Mean over every element of `max(x,0) − x·y + log(1+e^{−|x|})` —
/// `torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)` (reduction `mean`),
/// the numerically stable form of `BCE(sigmoid(x), y)`. `targets` has the logits' shape and dtype
/// (multi-hot 0/1, or soft labels in [0, 1]); only `logits` gets a gradient. Output: a scalar.
pub fn binary_cross_entropy_with_logits(tape: &Tape, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    mean_loss(tape, Kind::Bce, logits, targets, None)
}

/// [`binary_cross_entropy_with_logits`] with a weight on each label's positive term —
/// `F.binary_cross_entropy_with_logits(logits, targets, pos_weight=p)`: element (…, c) contributes
/// `(1 − y)·x + (1 + (p_c − 1)·y)·log(1 + e^{−x})` (PyTorch's stable form; p_c = 1 is the plain
/// loss), still averaged over every element. `pos_weight` has one finite, non-negative entry per
/// label (the last dimension): p_c > 1 raises the recall of a label with few positives.
pub fn binary_cross_entropy_with_logits_weighted(tape: &Tape, logits: &Tensor, targets: &Tensor, pos_weight: &[f64]) -> Result<Tensor> {
    const OP: &str = "binary_cross_entropy_with_logits";
    let c = super::last_dim(OP, logits)?;
    if pos_weight.len() != c {
        return shape_err(OP, format!("{} positive weights for {c} labels", pos_weight.len()));
    }
    if let Some((j, bad)) = pos_weight.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
        return crate::error::value_err(OP, format!("positive weight {bad} of label {j} must be finite and non-negative"));
    }
    mean_loss(tape, Kind::Bce, logits, targets, Some(pos_weight))
}

/// The BCE term with a positive weight p: `(1 − y)·x + (1 + (p − 1)·y)·softplus(−x)`, and its
/// derivative `(1 − y) + (1 + (p − 1)·y)·(σ(x) − 1)`; softplus(−x) = max(−x, 0) + log(1 + e^{−|x|}).
fn bce_pw_term<T: Float>(x: T, y: T, p: T) -> T {
    let lw = T::ONE + (p - T::ONE) * y;
    (T::ONE - y) * x + lw * ((-x).max(T::ZERO) + (T::ONE + (-x.max(-x)).exp()).ln())
}

fn bce_pw_derivative<T: Float>(x: T, y: T, p: T) -> T {
    let lw = T::ONE + (p - T::ONE) * y;
    (T::ONE - y) + lw * (T::ONE / (T::ONE + (-x).exp()) - T::ONE)
}

/// Mean over every element of `(input − target)²` — `torch.nn.functional.mse_loss` (reduction
/// `mean`). `target` has the input's shape and dtype; only `input` gets a gradient. Output: a scalar.
pub fn mse_loss(tape: &Tape, input: &Tensor, target: &Tensor) -> Result<Tensor> {
    mean_loss(tape, Kind::Mse, input, target, None)
}

fn mean_loss(tape: &Tape, kind: Kind, x: &Tensor, y: &Tensor, pos_weight: Option<&[f64]>) -> Result<Tensor> {
    let op = kind.op();
    if x.shape() != y.shape() {
        return shape_err(op, format!("targets {:?} must have the input's shape {:?}", y.shape(), x.shape()));
    }
    if x.numel() == 0 {
        return shape_err(op, format!("needs at least one element, got {:?}", x.shape()));
    }
    let dtype = super::same_dtype(op, x, y)?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() || y.is_cuda() {
        return cuda::mean_loss(tape, kind, x, y, pos_weight);
    }
    let pos_weight = pos_weight.map(<[f64]>::to_vec);
    with_float!(op, dtype, T => {
        let (xs, ys) = (x.data::<T>(op)?, y.data::<T>(op)?);
        // f64 accumulation: the mean of many small terms stays exact to f32 output precision.
        let total: f64 = match &pos_weight {
            None => xs.par_iter().zip(ys.par_iter()).map(|(&a, &b)| kind.term(a, b).to_f64()).sum(),
            Some(p) => xs.par_iter().zip(ys.par_iter()).enumerate().map(|(i, (&a, &b))| bce_pw_term(a, b, T::from_f64(p[i % p.len()])).to_f64()).sum(),
        };
        let loss = T::from_f64(total / xs.len() as f64);
        Ok(tape.record(op, &[x, y], T::wrap(vec![loss]), vec![], |_| MeanLossBwd { kind, pos_weight }))
    })
}

struct MeanLossBwd {
    kind: Kind,
    /// BCE's weight of each label's positive term (last dimension), if any.
    pos_weight: Option<Vec<f64>>,
}

impl Backward for MeanLossBwd {
    // d loss / d x_i = f'(x_i, y_i) · dloss / n; the targets get none (they are data).
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let op = self.kind.op();
        with_float!(op, inputs[0].dtype(), T => {
            let (xs, ys) = (inputs[0].data::<T>(op)?, inputs[1].data::<T>(op)?);
            let g = T::slice(dout).expect("dout dtype")[0] / T::from_f64(xs.len() as f64);
            let kind = self.kind;
            if let Some(p) = &self.pos_weight {
                return sink.accumulate::<T>(&inputs[0], |dx| {
                    dx.par_iter_mut().zip(xs.par_iter().zip(ys.par_iter())).enumerate().for_each(|(i, (d, (&a, &b)))| {
                        *d += g * bce_pw_derivative(a, b, T::from_f64(p[i % p.len()]))
                    })
                });
            }
            sink.accumulate::<T>(&inputs[0], |dx| {
                dx.par_iter_mut().zip(xs.par_iter().zip(ys.par_iter())).for_each(|(d, (&a, &b))| *d += g * kind.derivative(a, b))
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/elementwise_loss.cu).
    use cudarc::driver::{CudaSlice, LaunchConfig};

    use super::Kind;
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, check_cuda, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    fn names(kind: Kind) -> (&'static str, &'static str) {
        match kind {
            Kind::Bce => ("bce_with_logits_fwd_v1", "bce_with_logits_bwd_v1"),
            Kind::Mse => ("mse_loss_fwd_v1", "mse_loss_bwd_v1"),
        }
    }

    pub(super) fn mean_loss(tape: &Tape, kind: Kind, x: &Tensor, y: &Tensor, pos_weight: Option<&[f64]>) -> Result<Tensor> {
        let op = kind.op();
        check_cuda(op, &[x, y])?;
        let dev = CudaDev::get()?;
        let n = x.numel() as i64;
        let mut loss = dev.alloc::<f32>(1)?;
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let Some(p) = pos_weight else {
            launch!(dev, "elementwise_loss", names(kind).0, one; &mut loss, x.cuda_f32(op)?, y.cuda_f32(op)?, &n)?;
            return Ok(tape.record(op, &[x, y], wrap(loss), vec![], |_| MeanLossBwd { kind, pos_weight: None }));
        };
        let pw = dev.htod(&p.iter().map(|&w| w as f32).collect::<Vec<f32>>())?;
        let c = p.len() as i32;
        launch!(dev, "elementwise_loss", "bce_with_logits_pw_fwd_v1", one; &mut loss, x.cuda_f32(op)?, y.cuda_f32(op)?, &pw, &n, &c)?;
        Ok(tape.record(op, &[x, y], wrap(loss), vec![], |_| MeanLossBwd { kind, pos_weight: Some(pw) }))
    }

    struct MeanLossBwd {
        kind: Kind,
        /// BCE's positive weight per label, on the device.
        pos_weight: Option<CudaSlice<f32>>,
    }

    impl Backward for MeanLossBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let op = self.kind.op();
            let dev = CudaDev::get()?;
            let dl = dout_f32(dout, op)?;
            let n = inputs[0].numel() as i64;
            let (x, y) = (inputs[0].cuda_f32(op)?, inputs[1].cuda_f32(op)?);
            sink.accumulate_cuda(&inputs[0], |dx| match &self.pos_weight {
                None => launch!(dev, "elementwise_loss", names(self.kind).1, cfg_1d(n as usize); dx, dl, x, y, &n),
                Some(pw) => {
                    let c = pw.len() as i32;
                    launch!(dev, "elementwise_loss", "bce_with_logits_pw_bwd_v1", cfg_1d(n as usize); dx, dl, x, y, pw, &n, &c)
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape).unwrap()
    }

    #[test]
    fn values_match_the_definitions() {
        let tape = Tape::inference();
        let (x, y) = (t(&[0.0, 2.0, -3.0, 40.0], &[2, 2]), t(&[1.0, 0.0, 0.25, 1.0], &[2, 2]));
        let bce = binary_cross_entropy_with_logits(&tape, &x, &y).unwrap().item().unwrap();
        let naive = |x: f64, y: f64| -(y * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - y) * (1.0 - 1.0 / (1.0 + (-x).exp())).ln());
        let want = (naive(0.0, 1.0) + naive(2.0, 0.0) + naive(-3.0, 0.25) + 40f64.exp().recip()) / 4.0;
        assert!((bce - want).abs() < 1e-6, "{bce} vs {want}");
        let mse = mse_loss(&tape, &x, &y).unwrap().item().unwrap();
        assert!((mse - (1.0 + 4.0 + 3.25f64.powi(2) + 39.0f64.powi(2)) / 4.0).abs() < 1e-3, "{mse}");
    }

    #[test]
    fn large_logits_stay_finite() {
        let tape = Tape::training(0);
        let x = t(&[1e4, -1e4, 90.0, -90.0], &[4]).requires_grad();
        let y = t(&[0.0, 1.0, 1.0, 0.0], &[4]);
        let l = binary_cross_entropy_with_logits(&tape, &x, &y).unwrap();
        assert!((l.item().unwrap() - 5000.0).abs() < 1e-2, "{}", l.item().unwrap());
        let g = tape.backward(&l).unwrap();
        let d = g.tensor(&x).unwrap().to_f64_vec();
        assert_eq!(d, vec![0.25, -0.25, 0.0, 0.0]);
    }

    #[test]
    fn bad_shapes_and_dtypes_are_errors() {
        let tape = Tape::inference();
        let e = mse_loss(&tape, &t(&[1.0, 2.0], &[2]), &t(&[1.0, 2.0], &[2, 1])).unwrap_err().to_string();
        assert!(e.contains("mse_loss") && e.contains("[2, 1]"), "{e}");
        let ids = Tensor::from_ids(vec![1, 0], &[2]).unwrap();
        let e = binary_cross_entropy_with_logits(&tape, &t(&[1.0, 2.0], &[2]), &ids).unwrap_err().to_string();
        assert!(e.contains("binary_cross_entropy_with_logits"), "{e}");
        let e = mse_loss(&tape, &t(&[], &[0]), &t(&[], &[0])).unwrap_err().to_string();
        assert!(e.contains("at least one element"), "{e}");
    }
}

//! Softmax cross-entropy with integer targets and `ignore_index`, as one op.

use rayon::prelude::*;

use super::last_dim;
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, value_err, Result};
use crate::float::Float;
use crate::tensor::{CpuBuf, Tensor};
use crate::with_float;

/// The target value that contributes no loss (PyTorch's and HF's label for sub-tokens/padding).
pub const IGNORE_INDEX: i64 = -100;

/// Mean over non-ignored positions of `logsumexp(logits_n) − logits_n[target_n]` —
/// `torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)`.
/// `logits (…, V)`, `targets (…)` I64; output is a scalar. If every target is ignored the loss is
/// 0 with no gradient (PyTorch returns NaN).
pub fn cross_entropy(tape: &Tape, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let v = last_dim(OP, logits)?;
    if targets.shape() != &logits.shape()[..logits.rank() - 1] {
        return shape_err(OP, format!("targets {:?} must be logits {:?} without the last dimension", targets.shape(), logits.shape()));
    }
    let t = targets.ids(OP)?;
    if let Some((pos, bad)) = t.iter().enumerate().find(|(_, &y)| y != IGNORE_INDEX && (y < 0 || y as usize >= v)) {
        return value_err(OP, format!("target {bad} at position {pos} is not a class in 0..{v} (or {IGNORE_INDEX})"));
    }
    let count = t.iter().filter(|&&y| y != IGNORE_INDEX).count();
    with_float!(OP, logits.dtype(), T => {
        let x = logits.data::<T>(OP)?;
        let lse: Vec<T> = x.par_chunks(v).map(|row| {
            let m = row.iter().copied().fold(T::neg_infinity(), T::max);
            m + row.iter().map(|&z| (z - m).exp()).sum::<T>().ln()
        }).collect();
        let total: f64 = t.iter().zip(&lse).enumerate()
            .filter(|(_, (&y, _))| y != IGNORE_INDEX)
            .map(|(n, (&y, &l))| (l - x[n * v + y as usize]).to_f64())
            .sum();
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        Ok(tape.record(OP, &[logits, targets], T::wrap(vec![T::from_f64(loss)]), vec![], |_| CrossEntropyBwd { v, count, lse }))
    })
}

struct CrossEntropyBwd<T> {
    v: usize,
    count: usize,
    lse: Vec<T>,
}

impl<T: Float> Backward for CrossEntropyBwd<T> {
    // d loss / d logits_n = (softmax(logits_n) − onehot(target_n)) · dloss / count, 0 if ignored.
    fn backward(&self, inputs: &[Tensor], dout: &CpuBuf, sink: &mut GradSink) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let x = inputs[0].data::<T>("cross_entropy")?;
        let t = inputs[1].ids("cross_entropy")?;
        let g = T::slice(dout).expect("dout dtype")[0] / T::from_f64(self.count as f64);
        let v = self.v;
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(n, (d, row))| {
                if t[n] == IGNORE_INDEX {
                    return;
                }
                for j in 0..v {
                    d[j] += g * (row[j] - self.lse[n]).exp();
                }
                d[t[n] as usize] -= g;
            })
        })
    }
}

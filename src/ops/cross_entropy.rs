//! Softmax cross-entropy with integer targets, `ignore_index` and label smoothing, as one op.

use rayon::prelude::*;

use super::last_dim;
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, value_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// The target value that contributes no loss (PyTorch's and HF's label for sub-tokens/padding).
pub const IGNORE_INDEX: i64 = -100;

/// Mean over non-ignored positions of `logsumexp(logits_n) − logits_n[target_n]` —
/// `torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)`.
/// `logits (…, V)`, `targets (…)` I64; output is a scalar. If every target is ignored the loss is
/// 0 with no gradient (PyTorch returns NaN).
pub fn cross_entropy(tape: &Tape, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    cross_entropy_smoothed(tape, logits, targets, 0.0)
}

/// Cross-entropy against targets smoothed by `label_smoothing` = ε ∈ [0, 1]: each row's loss is
/// `(1 − ε)·(lse − x_t) + ε·(lse − mean_j x_j)` (the target's weight 1 − ε + ε/V, every class's
/// ε/V), averaged over non-ignored rows — `F.cross_entropy(..., label_smoothing=ε)` and
/// transformers' `label_smoothing_factor`. ε = 0 is [`cross_entropy`].
pub fn cross_entropy_smoothed(tape: &Tape, logits: &Tensor, targets: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let v = last_dim(OP, logits)?;
    let eps = label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return value_err(OP, format!("label smoothing {eps} must be in [0, 1]"));
    }
    if targets.shape() != &logits.shape()[..logits.rank() - 1] {
        return shape_err(OP, format!("targets {:?} must be logits {:?} without the last dimension", targets.shape(), logits.shape()));
    }
    #[cfg(feature = "cuda")]
    if logits.is_cuda() || targets.is_cuda() {
        return cuda::cross_entropy(tape, logits, targets, v, eps);
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
            .map(|(n, (&y, &l))| {
                let row = &x[n * v..(n + 1) * v];
                let nll = (l - row[y as usize]).to_f64();
                if eps == 0.0 {
                    return nll;
                }
                let mean = row.iter().map(|z| z.to_f64()).sum::<f64>() / v as f64;
                (1.0 - eps) * nll + eps * (l.to_f64() - mean)
            })
            .sum();
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        Ok(tape.record(OP, &[logits, targets], T::wrap(vec![T::from_f64(loss)]), vec![], |_| CrossEntropyBwd { v, count, lse, eps }))
    })
}

struct CrossEntropyBwd<T> {
    v: usize,
    count: usize,
    lse: Vec<T>,
    eps: f64,
}

impl<T: Float> Backward for CrossEntropyBwd<T> {
    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(&self.lse[..])
    }

    // d loss / d logits_n = (softmax(logits_n) − (1 − ε)·onehot(target_n) − ε/V) · dloss / count,
    // 0 if ignored.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let x = inputs[0].data::<T>("cross_entropy")?;
        let t = inputs[1].ids("cross_entropy")?;
        let g = T::slice(dout).expect("dout dtype")[0] / T::from_f64(self.count as f64);
        let v = self.v;
        let (hit, spread) = (g * T::from_f64(1.0 - self.eps), g * T::from_f64(self.eps / v as f64));
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(n, (d, row))| {
                if t[n] == IGNORE_INDEX {
                    return;
                }
                for j in 0..v {
                    d[j] += g * (row[j] - self.lse[n]).exp();
                }
                if self.eps != 0.0 {
                    for dj in d.iter_mut() {
                        *dj -= spread;
                    }
                }
                d[t[n] as usize] -= hit;
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/cross_entropy.cu).
    use cudarc::driver::{CudaSlice, LaunchConfig};

    use super::IGNORE_INDEX;
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, cfg_rows, check_cuda, dout_f32, ids_host, launch, wrap, CudaDev};
    use crate::error::{value_err, Result};
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "cross_entropy";

    pub(super) fn cross_entropy(tape: &Tape, logits: &Tensor, targets: &Tensor, v: usize, eps: f64) -> Result<Tensor> {
        check_cuda(OP, &[logits, targets])?;
        let t = ids_host(targets, OP)?;
        if let Some((pos, bad)) = t.iter().enumerate().find(|(_, &y)| y != IGNORE_INDEX && (y < 0 || y as usize >= v)) {
            return value_err(OP, format!("target {bad} at position {pos} is not a class in 0..{v} (or {IGNORE_INDEX})"));
        }
        let dev = CudaDev::get()?;
        let rows = t.len();
        let (r, vi, e) = (rows as i64, v as i32, eps as f32);
        let mut row_loss = dev.alloc::<f32>(rows)?;
        let mut lse = dev.alloc::<f32>(rows)?;
        let mut loss = dev.alloc::<f32>(1)?;
        let mut count = dev.alloc::<f32>(1)?;
        let td = targets.cuda_i64(OP)?;
        launch!(dev, "cross_entropy", "cross_entropy_fwd_v1", cfg_rows(rows, 256, 0); &mut row_loss, &mut lse, logits.cuda_f32(OP)?, td, &r, &vi, &e)?;
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        launch!(dev, "cross_entropy", "cross_entropy_reduce_v1", one; &mut loss, &mut count, &row_loss, td, &r)?;
        Ok(tape.record(OP, &[logits, targets], wrap(loss), vec![], |_| CrossEntropyBwd { v, lse, count, eps: e }))
    }

    struct CrossEntropyBwd {
        v: usize,
        lse: CudaSlice<f32>,
        count: CudaSlice<f32>,
        eps: f32,
    }

    impl Backward for CrossEntropyBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (logits, targets) = (&inputs[0], &inputs[1]);
            let dl = dout_f32(dout, OP)?;
            let (r, vi) = ((logits.numel() / self.v) as i64, self.v as i32);
            let (x, td) = (logits.cuda_f32(OP)?, targets.cuda_i64(OP)?);
            sink.accumulate_cuda(logits, |dx| {
                launch!(dev, "cross_entropy", "cross_entropy_bwd_v1", cfg_1d(logits.numel()); dx, dl, &self.count, &self.lse, x, td, &r, &vi, &self.eps)
            })
        }
    }
}

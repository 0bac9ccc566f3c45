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
    cross_entropy_impl(tape, logits, targets, None, label_smoothing)
}

/// Cross-entropy with a weight per class, `F.cross_entropy(..., weight=w, label_smoothing=ε)`:
/// row n with target t contributes `(1 − ε)·w_t·(lse − x_t) + (ε/V)·Σ_j w_j·(lse − x_j)` and the
/// sum over non-ignored rows is divided by `Σ_n w_{t_n}` (PyTorch's weighted mean), so a batch's
/// rare-class rows count for more (class-balanced training of imbalanced labels). `weight` has
/// one finite, non-negative entry per class. If every target is ignored or weighs 0 the loss is 0
/// with no gradient (PyTorch returns NaN).
pub fn cross_entropy_weighted(tape: &Tape, logits: &Tensor, targets: &Tensor, weight: &[f64], label_smoothing: f64) -> Result<Tensor> {
    cross_entropy_impl(tape, logits, targets, Some(weight), label_smoothing)
}

fn cross_entropy_impl(tape: &Tape, logits: &Tensor, targets: &Tensor, weight: Option<&[f64]>, eps: f64) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let v = last_dim(OP, logits)?;
    if !(0.0..=1.0).contains(&eps) {
        return value_err(OP, format!("label smoothing {eps} must be in [0, 1]"));
    }
    if targets.shape() != &logits.shape()[..logits.rank() - 1] {
        return shape_err(OP, format!("targets {:?} must be logits {:?} without the last dimension", targets.shape(), logits.shape()));
    }
    if let Some(w) = weight {
        if w.len() != v {
            return shape_err(OP, format!("{} class weights for {v} classes", w.len()));
        }
        if let Some((j, bad)) = w.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
            return value_err(OP, format!("class weight {bad} of class {j} must be finite and non-negative"));
        }
    }
    #[cfg(feature = "cuda")]
    if logits.is_cuda() || targets.is_cuda() {
        return cuda::cross_entropy(tape, logits, targets, v, eps, weight);
    }
    let t = targets.ids(OP)?;
    if let Some((pos, bad)) = t.iter().enumerate().find(|(_, &y)| y != IGNORE_INDEX && (y < 0 || y as usize >= v)) {
        return value_err(OP, format!("target {bad} at position {pos} is not a class in 0..{v} (or {IGNORE_INDEX})"));
    }
    // The normaliser: the number of non-ignored rows, or the sum of their targets' weights.
    let kept = t.iter().filter(|&&y| y != IGNORE_INDEX);
    let norm = match weight {
        None => kept.count() as f64,
        Some(w) => kept.map(|&y| w[y as usize]).sum(),
    };
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
                match weight {
                    None if eps == 0.0 => nll,
                    None => {
                        let mean = row.iter().map(|z| z.to_f64()).sum::<f64>() / v as f64;
                        (1.0 - eps) * nll + eps * (l.to_f64() - mean)
                    }
                    Some(w) => {
                        let hit = (1.0 - eps) * w[y as usize] * nll;
                        if eps == 0.0 {
                            return hit;
                        }
                        let spread = row.iter().zip(w).map(|(z, wj)| wj * (l - *z).to_f64()).sum::<f64>();
                        hit + eps / v as f64 * spread
                    }
                }
            })
            .sum();
        let loss = if norm == 0.0 { 0.0 } else { total / norm };
        let weight = weight.map(<[f64]>::to_vec);
        Ok(tape.record(OP, &[logits, targets], T::wrap(vec![T::from_f64(loss)]), vec![], |_| CrossEntropyBwd { v, norm, lse, eps, weight }))
    })
}

struct CrossEntropyBwd<T> {
    v: usize,
    /// The loss's divisor: the non-ignored row count, or their targets' total weight.
    norm: f64,
    lse: Vec<T>,
    eps: f64,
    weight: Option<Vec<f64>>,
}

impl<T: Float> Backward for CrossEntropyBwd<T> {
    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(&self.lse[..]) + self.weight.as_ref().map_or(0, |w| std::mem::size_of_val(&w[..]))
    }

    // d loss / d logits_n = (softmax(logits_n) − (1 − ε)·onehot(target_n) − ε/V) · dloss / count,
    // 0 if ignored. Weighted: (a_n·softmax − (1 − ε)·w_t·onehot − (ε/V)·w) · dloss / Σw_t with
    // a_n = (1 − ε)·w_t + (ε/V)·Σ_j w_j.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        if self.norm == 0.0 {
            return Ok(());
        }
        let x = inputs[0].data::<T>("cross_entropy")?;
        let t = inputs[1].ids("cross_entropy")?;
        let g = T::slice(dout).expect("dout dtype")[0] / T::from_f64(self.norm);
        let v = self.v;
        let eps = self.eps;
        if let Some(w) = &self.weight {
            let spread: Vec<T> = w.iter().map(|&wj| g * T::from_f64(eps / v as f64 * wj)).collect();
            let wsum: f64 = w.iter().sum();
            return sink.accumulate::<T>(&inputs[0], |dx| {
                dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(n, (d, row))| {
                    if t[n] == IGNORE_INDEX {
                        return;
                    }
                    let wt = w[t[n] as usize];
                    let a = g * T::from_f64((1.0 - eps) * wt + eps / v as f64 * wsum);
                    for j in 0..v {
                        d[j] += a * (row[j] - self.lse[n]).exp() - spread[j];
                    }
                    d[t[n] as usize] -= g * T::from_f64((1.0 - eps) * wt);
                })
            });
        }
        let (hit, spread) = (g * T::from_f64(1.0 - eps), g * T::from_f64(eps / v as f64));
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(n, (d, row))| {
                if t[n] == IGNORE_INDEX {
                    return;
                }
                for j in 0..v {
                    d[j] += g * (row[j] - self.lse[n]).exp();
                }
                if eps != 0.0 {
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

    pub(super) fn cross_entropy(tape: &Tape, logits: &Tensor, targets: &Tensor, v: usize, eps: f64, weight: Option<&[f64]>) -> Result<Tensor> {
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
        let mut norm = dev.alloc::<f32>(1)?;
        let td = targets.cuda_i64(OP)?;
        let x = logits.cuda_f32(OP)?;
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let Some(w) = weight else {
            launch!(dev, "cross_entropy", "cross_entropy_fwd_v1", cfg_rows(rows, 256, 0); &mut row_loss, &mut lse, x, td, &r, &vi, &e)?;
            launch!(dev, "cross_entropy", "cross_entropy_reduce_v1", one; &mut loss, &mut norm, &row_loss, td, &r)?;
            return Ok(tape.record(OP, &[logits, targets], wrap(loss), vec![], |_| CrossEntropyBwd { v, lse, norm, eps: e, weight: None }));
        };
        let wd = dev.htod(&w.iter().map(|&x| x as f32).collect::<Vec<f32>>())?;
        let mut row_w = dev.alloc::<f32>(rows)?;
        launch!(dev, "cross_entropy", "cross_entropy_weighted_fwd_v1", cfg_rows(rows, 256, 0); &mut row_loss, &mut row_w, &mut lse, x, td, &wd, &r, &vi, &e)?;
        launch!(dev, "cross_entropy", "cross_entropy_weighted_reduce_v1", one; &mut loss, &mut norm, &row_loss, &row_w, &r)?;
        let wsum = w.iter().map(|&x| x as f32).sum::<f32>();
        Ok(tape.record(OP, &[logits, targets], wrap(loss), vec![], |_| CrossEntropyBwd { v, lse, norm, eps: e, weight: Some((wd, wsum)) }))
    }

    struct CrossEntropyBwd {
        v: usize,
        lse: CudaSlice<f32>,
        /// The loss's divisor on the device: the non-ignored row count, or their targets' weight.
        norm: CudaSlice<f32>,
        eps: f32,
        /// The class weights and their sum.
        weight: Option<(CudaSlice<f32>, f32)>,
    }

    impl Backward for CrossEntropyBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (logits, targets) = (&inputs[0], &inputs[1]);
            let dl = dout_f32(dout, OP)?;
            let (r, vi) = ((logits.numel() / self.v) as i64, self.v as i32);
            let (x, td) = (logits.cuda_f32(OP)?, targets.cuda_i64(OP)?);
            sink.accumulate_cuda(logits, |dx| match &self.weight {
                None => launch!(dev, "cross_entropy", "cross_entropy_bwd_v1", cfg_1d(logits.numel()); dx, dl, &self.norm, &self.lse, x, td, &r, &vi, &self.eps),
                Some((w, wsum)) => launch!(dev, "cross_entropy", "cross_entropy_weighted_bwd_v1", cfg_1d(logits.numel()); dx, dl, &self.norm, &self.lse, x, td, w, &r, &vi, &self.eps, wsum),
            })
        }
    }
}

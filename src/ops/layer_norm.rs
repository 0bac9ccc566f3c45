//! Layer normalisation over the last dimension, forward and backward in one op.

use rayon::prelude::*;

use super::elementwise::wide;
use super::reduce::lane_sum;
use super::{last_dim, same_dtype};
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `y = (x − mean) / √(var + eps) · weight + bias` over the last dimension (biased variance) —
/// `torch.nn.functional.layer_norm(x, (C,), weight, bias, eps)`. `x (…, C)`, `weight, bias (C)`.
/// Forward saves the per-row mean and 1/σ for the backward.
pub fn layer_norm(tape: &Tape, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let c = last_dim(OP, x)?;
    if weight.shape() != [c] || bias.shape() != [c] {
        return shape_err(OP, format!("x {:?} needs weight and bias ({c}), got {:?} and {:?}", x.shape(), weight.shape(), bias.shape()));
    }
    same_dtype(OP, x, weight)?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() || weight.is_cuda() || bias.is_cuda() {
        return cuda::layer_norm(tape, x, weight, bias, eps, c);
    }
    with_float!(OP, same_dtype(OP, x, bias)?, T => {
        let (xd, w, b) = (x.data::<T>(OP)?, weight.data::<T>(OP)?, bias.data::<T>(OP)?);
        let rows = xd.len() / c;
        let mut y = vec![T::ZERO; xd.len()];
        let mut mean = vec![T::ZERO; rows];
        let mut rstd = vec![T::ZERO; rows];
        let inv_c = T::from_f64(1.0 / c as f64);
        let epst = T::from_f64(eps);
        y.par_chunks_mut(c)
            .zip(xd.par_chunks(c))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(|((yr, xr), (m, r))| {
                // Row sums in 8 lanes (vectorised, fixed order) inside the AVX2 build when present.
                wide(#[inline(always)] || {
                    let mu = lane_sum(xr) * inv_c;
                    for (y, &v) in yr.iter_mut().zip(xr) {
                        *y = (v - mu) * (v - mu);
                    }
                    let var = lane_sum(yr) * inv_c;
                    let rs = T::ONE / (var + epst).sqrt();
                    // Zipped, not indexed: no bounds checks, so the loop vectorises.
                    for (((y, &v), &wi), &bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        *y = (v - mu) * rs * wi + bi;
                    }
                    *m = mu;
                    *r = rs;
                })
            });
        Ok(tape.record(OP, &[x, weight, bias], T::wrap(y), x.shape().to_vec(), |_| LayerNormBwd { c, mean, rstd }))
    })
}

struct LayerNormBwd<T> {
    c: usize,
    mean: Vec<T>,
    rstd: Vec<T>,
}

impl<T: Float> Backward for LayerNormBwd<T> {
    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(&self.mean[..]) + std::mem::size_of_val(&self.rstd[..])
    }

    // With n = (x − μ)·r and g = dy·w:
    //   dx = r · (g − mean(g) − n · mean(g·n)),   dw = Σ_rows dy·n,   db = Σ_rows dy.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let (x, w) = (inputs[0].data::<T>("layer_norm")?, inputs[1].data::<T>("layer_norm")?);
        let dy = T::slice(dout).expect("dout dtype");
        let c = self.c;
        let inv_c = T::from_f64(1.0 / c as f64);
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(c).zip(x.par_chunks(c)).zip(dy.par_chunks(c)).enumerate().for_each(
                |(r, ((dxr, xr), dyr))| {
                    let (mu, rs) = (self.mean[r], self.rstd[r]);
                    wide(#[inline(always)] || {
                        // mean(g) and mean(g·n) in 8 interleaved lanes (vectorised, fixed order).
                        // Iterators over fixed-size blocks rather than indexing: no bounds checks,
                        // so the loops vectorise; the same operations in the same order.
                        const L: usize = 8;
                        let (mut sg, mut sgn) = ([T::ZERO; L], [T::ZERO; L]);
                        let (dyb, xb, wb) = (dyr.chunks_exact(L), xr.chunks_exact(L), w[..c].chunks_exact(L));
                        let (dyt, xt, wt) = (dyb.remainder(), xb.remainder(), wb.remainder());
                        for ((d, xv), wv) in dyb.zip(xb).zip(wb) {
                            let (d, xv, wv): (&[T; L], &[T; L], &[T; L]) = (d.try_into().unwrap(), xv.try_into().unwrap(), wv.try_into().unwrap());
                            for l in 0..L {
                                let g = d[l] * wv[l];
                                sg[l] += g;
                                sgn[l] += g * (xv[l] - mu) * rs;
                            }
                        }
                        let (mut mg, mut mgn) = (lane_sum(&sg), lane_sum(&sgn));
                        for ((&d, &xv), &wv) in dyt.iter().zip(xt).zip(wt) {
                            let g = d * wv;
                            mg += g;
                            mgn += g * (xv - mu) * rs;
                        }
                        mg *= inv_c;
                        mgn *= inv_c;
                        for (((dx, &xv), &d), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                            let n = (xv - mu) * rs;
                            *dx += rs * (d * wv - mg - n * mgn);
                        }
                    })
                },
            )
        })?;
        if sink.wants(&inputs[1]) || sink.wants(&inputs[2]) {
            // Column sums in parallel row blocks, then a short serial reduction.
            let rows = x.len() / c;
            let block = 64;
            let partial: Vec<(Vec<T>, Vec<T>)> = (0..rows.div_ceil(block))
                .into_par_iter()
                .map(|blk| {
                    let mut dw = vec![T::ZERO; c];
                    let mut db = vec![T::ZERO; c];
                    wide(#[inline(always)] || {
                        for r in blk * block..((blk + 1) * block).min(rows) {
                            let (mu, rs) = (self.mean[r], self.rstd[r]);
                            let (xr, dyr) = (&x[r * c..][..c], &dy[r * c..][..c]);
                            for (((dwv, dbv), &xv), &d) in dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(dyr) {
                                *dwv += d * (xv - mu) * rs;
                                *dbv += d;
                            }
                        }
                    });
                    (dw, db)
                })
                .collect();
            sink.accumulate::<T>(&inputs[1], |dw| {
                for (p, _) in &partial {
                    dw.iter_mut().zip(p).for_each(|(a, v)| *a += *v);
                }
            })?;
            sink.accumulate::<T>(&inputs[2], |db| {
                for (_, p) in &partial {
                    db.iter_mut().zip(p).for_each(|(a, v)| *a += *v);
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/layer_norm.cu).
    use cudarc::driver::CudaSlice;

    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, cfg_rows, check_cuda, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "layer_norm";

    pub(super) fn layer_norm(tape: &Tape, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, c: usize) -> Result<Tensor> {
        check_cuda(OP, &[x, w, b])?;
        let dev = CudaDev::get()?;
        let rows = x.numel() / c;
        let (r, ci, e) = (rows as i64, c as i32, eps as f32);
        let mut y = dev.alloc::<f32>(x.numel())?;
        let mut mean = dev.alloc::<f32>(rows)?;
        let mut rstd = dev.alloc::<f32>(rows)?;
        launch!(dev, "layer_norm", "layer_norm_fwd_v1", cfg_rows(rows, 256, 0);
            &mut y, &mut mean, &mut rstd, x.cuda_f32(OP)?, w.cuda_f32(OP)?, b.cuda_f32(OP)?, &r, &ci, &e)?;
        Ok(tape.record(OP, &[x, w, b], wrap(y), x.shape().to_vec(), |_| LayerNormBwd { c, mean, rstd }))
    }

    struct LayerNormBwd {
        c: usize,
        mean: CudaSlice<f32>,
        rstd: CudaSlice<f32>,
    }

    impl Backward for LayerNormBwd {
        fn saved_bytes(&self) -> usize {
            4 * (self.mean.len() + self.rstd.len())
        }

        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (x, w, b) = (&inputs[0], &inputs[1], &inputs[2]);
            let dy = dout_f32(dout, OP)?;
            let (xd, wd) = (x.cuda_f32(OP)?, w.cuda_f32(OP)?);
            let rows = x.numel() / self.c;
            let (r, ci) = (rows as i64, self.c as i32);
            sink.accumulate_cuda(x, |dx| {
                launch!(dev, "layer_norm", "layer_norm_bwd_dx_v1", cfg_rows(rows, 256, 0); dx, dy, xd, &self.mean, &self.rstd, wd, &r, &ci)
            })?;
            if sink.wants(w) || sink.wants(b) {
                let mut dw = dev.zeros::<f32>(self.c)?;
                let mut db = dev.zeros::<f32>(self.c)?;
                launch!(dev, "layer_norm", "layer_norm_bwd_dwdb_v1", cfg_1d(self.c); &mut dw, &mut db, dy, xd, &self.mean, &self.rstd, &r, &ci)?;
                sink.add_cuda_owned(w, dw)?;
                sink.add_cuda_owned(b, db)?;
            }
            Ok(())
        }
    }
}

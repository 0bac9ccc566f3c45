//! Masked mean pooling over the sequence (sentence-transformers' `mean` pooling).

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `y_b = Σ_t m_bt·x_bt / max(Σ_t m_bt, 1e-9)` — sentence-transformers `Pooling(mean)`:
/// `(x * m[..., None]).sum(1) / m.sum(1)[:, None].clamp(min=1e-9)`. `x (B, T, C)`, `mask (B, T)`
/// of I64 0/1; output `(B, C)`.
pub fn mean_pool(tape: &Tape, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    const OP: &str = "mean_pool";
    let s = x.shape();
    if s.len() != 3 || mask.shape() != &s[..2] {
        return shape_err(OP, format!("need x (B, T, C) and mask (B, T); got {s:?} and {:?}", mask.shape()));
    }
    let (t, c) = (s[1], s[2]);
    #[cfg(feature = "cuda")]
    if x.is_cuda() || mask.is_cuda() {
        return cuda::mean_pool(tape, x, mask, [s[0], t, c]);
    }
    let m = mask.ids(OP)?;
    with_float!(OP, x.dtype(), T => {
        let xd = x.data::<T>(OP)?;
        let mut y = vec![T::ZERO; s[0] * c];
        y.par_chunks_mut(c).enumerate().for_each(|(b, yb)| {
            let mb = &m[b * t..][..t];
            for (ti, &keep) in mb.iter().enumerate() {
                if keep != 0 {
                    let w = T::from_f64(keep as f64);
                    yb.iter_mut().zip(&xd[(b * t + ti) * c..][..c]).for_each(|(a, v)| *a += w * *v);
                }
            }
            let inv = T::ONE / T::from_f64((mb.iter().sum::<i64>() as f64).max(1e-9));
            yb.iter_mut().for_each(|a| *a *= inv);
        });
        Ok(tape.record(OP, &[x, mask], T::wrap(y), vec![s[0], c], |_| MeanPoolBwd::<T> { t, c, _t: Default::default() }))
    })
}

struct MeanPoolBwd<T> {
    t: usize,
    c: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for MeanPoolBwd<T> {
    // dx_bt += m_bt · dy_b / max(Σ_t m_bt, 1e-9)
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let m = inputs[1].ids("mean_pool")?;
        let dy = T::slice(dout).expect("dout dtype");
        let (t, c) = (self.t, self.c);
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(t * c).enumerate().for_each(|(b, dxb)| {
                let mb = &m[b * t..][..t];
                let inv = 1.0 / (mb.iter().sum::<i64>() as f64).max(1e-9);
                for (ti, &keep) in mb.iter().enumerate() {
                    let w = T::from_f64(keep as f64 * inv);
                    dxb[ti * c..][..c].iter_mut().zip(&dy[b * c..][..c]).for_each(|(a, g)| *a += w * *g);
                }
            })
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/pooling.cu).
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, check_cuda, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "mean_pool";

    pub(super) fn mean_pool(tape: &Tape, x: &Tensor, mask: &Tensor, [b, t, c]: [usize; 3]) -> Result<Tensor> {
        check_cuda(OP, &[x, mask])?;
        let dev = CudaDev::get()?;
        let dims = [b as i32, t as i32, c as i32];
        let mut y = dev.alloc::<f32>(b * c)?;
        launch!(dev, "pooling", "mean_pool_fwd_v1", cfg_1d(b * c); &mut y, x.cuda_f32(OP)?, mask.cuda_i64(OP)?, &dims[0], &dims[1], &dims[2])?;
        Ok(tape.record(OP, &[x, mask], wrap(y), vec![b, c], |_| MeanPoolBwd { dims }))
    }

    struct MeanPoolBwd {
        dims: [i32; 3],
    }

    impl Backward for MeanPoolBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let dy = dout_f32(dout, OP)?;
            let m = inputs[1].cuda_i64(OP)?;
            let d = &self.dims;
            sink.accumulate_cuda(&inputs[0], |dx| {
                launch!(dev, "pooling", "mean_pool_bwd_v1", cfg_1d(inputs[0].numel()); dx, dy, m, &d[0], &d[1], &d[2])
            })
        }
    }
}

//! Softmax over the last dimension.

use rayon::prelude::*;

use super::last_dim;
use super::reduce::{lane_sum, lanes};
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::Result;
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `y_i = e^{x_i − max x} / Σ_j e^{x_j − max x}` along the last dimension —
/// `torch.softmax(x, dim=-1)`. Any shape `(…, C)`. Backward uses the saved output.
pub fn softmax(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let c = last_dim("softmax", x)?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::softmax(tape, x, c);
    }
    with_float!("softmax", x.dtype(), T => {
        let mut y = x.data::<T>("softmax")?.to_vec();
        y.par_chunks_mut(c).for_each(softmax_row_in_place);
        Ok(tape.record("softmax", &[x], T::wrap(y), x.shape().to_vec(), |out: &Tensor| SoftmaxBwd::<T> { y: out.detach(), c, _t: Default::default() }))
    })
}

/// Numerically stable softmax of one row, in place. A row of all −∞ becomes all zeros.
///
/// The max and the sum run in 8 interleaved lanes (then the lanes and the tail in order): a fixed
/// order, so results do not depend on the build, and loops the compiler can vectorise (a single
/// running sum or max cannot be, without reassociating).
#[inline(always)] // so it is compiled into callers' AVX2 builds (attention)
pub(crate) fn softmax_row_in_place<T: Float>(row: &mut [T]) {
    let m = lanes(row, T::neg_infinity(), T::max);
    if m == T::neg_infinity() {
        row.iter_mut().for_each(|v| *v = T::ZERO);
        return;
    }
    // Exponentials in their own loop (it vectorises: exp_fast is branch-free for f32), then the sum.
    for v in row.iter_mut() {
        *v = (*v - m).exp_fast();
    }
    let inv = T::ONE / lane_sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `dx_i += y_i · (dy_i − Σ_j y_j·dy_j)` for one row.
#[inline(always)]
pub(crate) fn softmax_row_backward<T: Float>(dx: &mut [T], y: &[T], dy: &[T]) {
    let dot: T = y.iter().zip(dy).map(|(a, b)| *a * *b).sum();
    for i in 0..dx.len() {
        dx[i] += y[i] * (dy[i] - dot);
    }
}

struct SoftmaxBwd<T> {
    y: Tensor,
    c: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for SoftmaxBwd<T> {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let y = self.y.data::<T>("softmax")?;
        let dy = T::slice(dout).expect("dout dtype");
        let c = self.c;
        sink.accumulate::<T>(&inputs[0], |dx| {
            dx.par_chunks_mut(c)
                .zip(y.par_chunks(c).zip(dy.par_chunks(c)))
                .for_each(|(d, (yr, gr))| softmax_row_backward(d, yr, gr))
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/softmax.cu).
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_rows, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    pub(super) fn softmax(tape: &Tape, x: &Tensor, c: usize) -> Result<Tensor> {
        let dev = CudaDev::get()?;
        let rows = x.numel() / c;
        let (r, ci) = (rows as i64, c as i32);
        let mut y = dev.alloc::<f32>(x.numel())?;
        launch!(dev, "softmax", "softmax_fwd_v1", cfg_rows(rows, 256, 0); &mut y, x.cuda_f32("softmax")?, &r, &ci)?;
        Ok(tape.record("softmax", &[x], wrap(y), x.shape().to_vec(), |out: &Tensor| SoftmaxBwd { y: out.detach(), c }))
    }

    struct SoftmaxBwd {
        y: Tensor,
        c: usize,
    }

    impl Backward for SoftmaxBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let dy = dout_f32(dout, "softmax")?;
            let y = self.y.cuda_f32("softmax")?;
            let rows = self.y.numel() / self.c;
            let (r, ci) = (rows as i64, self.c as i32);
            sink.accumulate_cuda(&inputs[0], |dx| launch!(dev, "softmax", "softmax_bwd_v1", cfg_rows(rows, 256, 0); dx, dy, y, &r, &ci))
        }
    }
}

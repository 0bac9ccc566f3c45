//! Softmax over the last dimension.

use rayon::prelude::*;

use super::last_dim;
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::Result;
use crate::float::Float;
use crate::tensor::{CpuBuf, Tensor};
use crate::with_float;

/// `y_i = e^{x_i − max x} / Σ_j e^{x_j − max x}` along the last dimension —
/// `torch.softmax(x, dim=-1)`. Any shape `(…, C)`. Backward uses the saved output.
pub fn softmax(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let c = last_dim("softmax", x)?;
    with_float!("softmax", x.dtype(), T => {
        let mut y = x.data::<T>("softmax")?.to_vec();
        y.par_chunks_mut(c).for_each(softmax_row_in_place);
        Ok(tape.record("softmax", &[x], T::wrap(y), x.shape().to_vec(), |out: &Tensor| SoftmaxBwd::<T> { y: out.detach(), c, _t: Default::default() }))
    })
}

/// Numerically stable softmax of one row, in place. A row of all −∞ becomes all zeros.
pub(crate) fn softmax_row_in_place<T: Float>(row: &mut [T]) {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    if m == T::neg_infinity() {
        row.iter_mut().for_each(|v| *v = T::ZERO);
        return;
    }
    let mut s = T::ZERO;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    let inv = T::ONE / s;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `dx_i += y_i · (dy_i − Σ_j y_j·dy_j)` for one row.
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
    fn backward(&self, inputs: &[Tensor], dout: &CpuBuf, sink: &mut GradSink) -> Result<()> {
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

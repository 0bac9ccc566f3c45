//! `tanh` (the BERT pooler's activation).

use super::elementwise::unary;
use crate::autograd::Tape;
use crate::error::Result;
use crate::float::Float;
use crate::tensor::Tensor;
use crate::with_float;

/// Elementwise `tanh(x)` — `torch.tanh`. Any shape.
pub fn tanh(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return super::elementwise::cuda::unary(tape, "tanh", "tanh", "tanh_fwd_v1", "tanh_bwd_v1", x);
    }
    with_float!("tanh", x.dtype(), T => unary::<T, _, _>(tape, "tanh", x, |v: T| v.tanh(), tanh_df::<T>))
}

// d/dx tanh x = 1 − tanh² x
fn tanh_df<T: Float>(x: T) -> T {
    let t = x.tanh();
    T::ONE - t * t
}

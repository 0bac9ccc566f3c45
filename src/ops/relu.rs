//! ReLU (HF `hidden_act = "relu"`).

use super::elementwise::unary;
use crate::autograd::Tape;
use crate::error::Result;
use crate::float::Float;
use crate::tensor::Tensor;
use crate::with_float;

/// `max(x, 0)` — `torch.relu(x)`. Any shape. The derivative at 0 is taken as 0, as in PyTorch.
pub fn relu(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return super::elementwise::cuda::unary(tape, "relu", "relu", "relu_fwd_v1", "relu_bwd_v1", x);
    }
    with_float!("relu", x.dtype(), T => unary::<T, _, _>(tape, "relu", x, |v: T| if v > T::ZERO { v } else { T::ZERO }, |v: T| if v > T::ZERO { T::ONE } else { T::ZERO }))
}

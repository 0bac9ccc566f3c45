//! GELU activations: `gelu` (exact, erf — HF `"gelu"`) and `gelu_tanh` (HF `"gelu_new"`).

use super::elementwise::unary;
use crate::autograd::Tape;
use crate::error::Result;
use crate::float::Float;
use crate::tensor::Tensor;
use crate::with_float;

const SQRT_1_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7; // 1/√(2π)
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_C: f64 = 0.044_715;

/// `x · Φ(x) = ½·x·(1 + erf(x/√2))` — `torch.nn.functional.gelu(x)`. Any shape.
pub fn gelu(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return super::elementwise::cuda::unary(tape, "gelu", "gelu", "gelu_fwd_v1", "gelu_bwd_v1", x);
    }
    with_float!("gelu", x.dtype(), T => unary::<T>(tape, "gelu", x, gelu_fwd, gelu_df))
}

fn gelu_fwd<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (x * T::from_f64(SQRT_1_2)).erf())
}

// d/dx x·Φ(x) = Φ(x) + x·φ(x), φ(x) = e^{−x²/2}/√(2π).
fn gelu_df<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    let cdf = half * (T::ONE + (x * T::from_f64(SQRT_1_2)).erf());
    let pdf = (-half * x * x).exp() * T::from_f64(INV_SQRT_2PI);
    cdf + x * pdf
}

/// `½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` — `torch.nn.functional.gelu(x, approximate="tanh")`.
pub fn gelu_tanh(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return super::elementwise::cuda::unary(tape, "gelu_tanh", "gelu", "gelu_tanh_fwd_v1", "gelu_tanh_bwd_v1", x);
    }
    with_float!("gelu_tanh", x.dtype(), T => unary::<T>(tape, "gelu_tanh", x, gelu_tanh_fwd, gelu_tanh_df))
}

fn gelu_tanh_fwd<T: Float>(x: T) -> T {
    let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_C) * x * x * x);
    T::from_f64(0.5) * x * (T::ONE + u.tanh())
}

// With u = √(2/π)(x + c·x³), t = tanh u:  d/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)(1 + 3c·x²).
fn gelu_tanh_df<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    let k = T::from_f64(SQRT_2_OVER_PI);
    let c = T::from_f64(GELU_C);
    let t = (k * (x + c * x * x * x)).tanh();
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * k * (T::ONE + T::from_f64(3.0) * c * x * x)
}

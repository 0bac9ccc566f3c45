//! The scalar types the CPU kernels are generic over. f32 is the engine's working precision;
//! f64 exists so every kernel can be checked against central finite differences at rel 1e-6.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::tensor::{Buf, DType};

pub trait Float:
    'static
    + Copy
    + Send
    + Sync
    + Debug
    + PartialOrd
    + Default
    + Sum
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    /// e^x for the hot loops (softmax, GELU): f32 takes `exp_f32` (branch-free, so the loops
    /// vectorise; ≤ 3e-7 relative), f64 stays on libm so the finite-difference reference is exact.
    fn exp_fast(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn neg_infinity() -> Self;
    /// Borrow a CPU buffer as this type, `None` when the dtype differs.
    fn slice(buf: &Buf) -> Option<&[Self]>;
    fn slice_mut(buf: &mut Buf) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> Buf;

    /// Mutable view as `f32` when `Self` is `f32`.
    #[inline(always)]
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        if std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>() {
            // SAFETY: Self is f32, so the layout is identical.
            Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
        } else {
            None
        }
    }

    /// View as `f32` when `Self` is `f32` (lets a kernel take a hand-written f32 path).
    #[inline(always)]
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        if std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>() {
            // SAFETY: Self is f32, so the layout is identical.
            Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
        } else {
            None
        }
    }

    /// Mutable view of a fixed-size tile as `f32` when `Self` is `f32`.
    #[inline(always)]
    fn tile_as_f32<const R: usize, const C: usize>(t: &mut [[Self; C]; R]) -> Option<&mut [[f32; C]; R]> {
        if std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>() {
            // SAFETY: Self is f32, so the layout is identical.
            Some(unsafe { &mut *(t as *mut [[Self; C]; R]).cast::<[[f32; C]; R]>() })
        } else {
            None
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $variant:ident, $erf:path, $exp_fast:path) => {
        impl Float for $t {
            const DTYPE: DType = DType::$variant;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp_fast(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn neg_infinity() -> Self {
                <$t>::NEG_INFINITY
            }
            fn slice(buf: &Buf) -> Option<&[Self]> {
                match buf {
                    Buf::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(buf: &mut Buf) -> Option<&mut [Self]> {
                match buf {
                    Buf::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> Buf {
                Buf::$variant(v)
            }
        }
    };
}

impl_float!(f32, F32, libm::erff, exp_f32);
impl_float!(f64, F64, libm::erf, f64::exp);

/// e^x for f32 without libm, branch-free: x = n·ln2 + r with |r| ≤ ln2/2 (n rounded by the
/// 1.5·2²³ trick; ln2 split in two so n·ln2 is exact), e^r by its degree-7 Taylor polynomial
/// (truncation < 6e-9 relative), 2^n put into the exponent bits. Above 88 the result is e^88;
/// below −87 it is 0 (flushed: e^x there is at most a denormal), so a masked −∞ score gives
/// exactly 0 as in libm.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0x3f318000: 9 significant bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // t = 1.5·2²³ + n holds n (|n| ≤ 127) in its low mantissa bits: 2^n's exponent field is
    // those bits + 127, taken with integer ops (a float → int cast saturates, which does not
    // vectorise).
    let y = p * f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}


/// Run `$body` with `$T` bound to the float type matching `$dtype`; other dtypes are an error
/// naming `$op`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            other => Err($crate::error::Error::DType {
                op: $op,
                dtype: other,
                detail: "the CPU kernels take f32 or f64".into(),
            }),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_accurate_over_the_normal_range() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}

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
    ($t:ty, $variant:ident, $erf:path) => {
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

impl_float!(f32, F32, libm::erff);
impl_float!(f64, F64, libm::erf);

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

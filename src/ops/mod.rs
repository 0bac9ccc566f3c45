//! The ops. Each file holds one op (or one family): its public function, the forward/backward
//! pair, the CPU kernels and its tests. Every public op takes the [`Tape`](crate::Tape) first
//! and returns a `Result` whose error names the op and the shapes.

pub mod attention;
pub mod concat;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod elementwise_loss;
pub mod embedding;
pub mod embedding_int8;
pub mod gelu;
pub(crate) mod gemm;
pub(crate) mod gemm_bf16;
pub mod layer_norm;
pub mod linear_int8;
pub mod matmul;
pub mod pooling;
pub(crate) mod reduce;
pub mod relu;
pub mod shape;
pub mod softmax;
pub mod tanh;

pub use attention::attention;
#[cfg(feature = "cuda")]
pub use attention::{with_attention_variant, AttentionVariant};
pub use concat::{concat, narrow};
pub use cross_entropy::{cross_entropy, cross_entropy_smoothed, cross_entropy_weighted, IGNORE_INDEX};
pub use dropout::dropout;
pub use elementwise::{add, bias_add, scale};
pub use elementwise_loss::{binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_weighted, mse_loss};
pub use embedding::embedding;
pub use embedding_int8::{embedding_int8, Int8Rows};
pub use gelu::{gelu, gelu_tanh};
pub use layer_norm::layer_norm;
pub use linear_int8::{linear_int8, Int8Weight};
pub use matmul::{linear, matmul, matmul_nt};
pub use pooling::mean_pool;
pub use relu::relu;
pub use shape::{merge_heads, reshape, split_heads, token};
pub use softmax::softmax;
pub use tanh::tanh;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The common dtype of two float operands, or an error naming `op`.
pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<DType> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            dtype: b.dtype(),
            detail: format!("operands differ: {:?} and {:?}", a.dtype(), b.dtype()),
        });
    }
    Ok(a.dtype())
}

/// The size of the last dimension (the "channels" C of a row-wise op), erroring on scalars.
pub(crate) fn last_dim(op: &'static str, t: &Tensor) -> Result<usize> {
    match t.shape().last() {
        Some(&c) if c > 0 => Ok(c),
        _ => crate::error::shape_err(op, format!("needs a non-empty last dimension, got {:?}", t.shape())),
    }
}

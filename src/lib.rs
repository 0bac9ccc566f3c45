//! engram: a from-scratch tensor engine for fine-tuning and running BERT-family models.
//!
//! Layers, bottom up: [`tensor`] (memory) → [`ops`] (kernels, each with its backward) →
//! [`autograd`] (the tape) → [`optim`] (AdamW, SGD, schedules, clipping).

pub mod autograd;
pub mod data;
pub mod device;
pub mod error;
pub mod float;
pub mod memory;
pub mod models;
pub mod ops;
pub mod optim;
pub mod tensor;
#[doc(hidden)]
pub mod testing;
pub mod train;
pub mod util;

pub use autograd::{Grads, Tape};
pub use error::{Error, Result};
pub use tensor::{Buf, DType, Device, Tensor};

//! Reverse-mode autograd on an explicit per-step [`Tape`].

mod grads;
mod tape;

pub use grads::{GradSink, Grads};
pub use tape::{Backward, Tape};

//! Reverse-mode autograd on an explicit per-step [`Tape`].

mod grads;
mod profile;
mod tape;

pub use grads::{GradSink, Grads};
pub use profile::{OpTime, Profile};
pub use tape::{Backward, CheckpointFn, Tape};

//! The one error type of the engine. Every error names the op (or file) and what was wrong.

use crate::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the op. `detail` says which dimensions disagree.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A dtype the op does not implement (e.g. integer logits).
    #[error("{op}: unsupported dtype {dtype:?} ({detail})")]
    DType { op: &'static str, dtype: DType, detail: String },

    /// Values that are out of the op's domain (token id ≥ vocab, label out of range, p ∉ [0,1)).
    #[error("{op}: invalid value: {detail}")]
    Value { op: &'static str, detail: String },

    /// Misuse of the tape (backward on a non-scalar without an upstream gradient, ...).
    #[error("autograd: {0}")]
    Autograd(String),

    /// A file that cannot be read or does not hold what it should (config, weights, tokenizer,
    /// data). `path` names the file; `detail` says what is wrong.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },

    /// A device that is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}

pub(crate) fn value_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Value { op, detail: detail.into() })
}

pub(crate) fn file_err<T>(path: impl AsRef<std::path::Path>, detail: impl Into<String>) -> Result<T> {
    Err(Error::File { path: path.as_ref().display().to_string(), detail: detail.into() })
}

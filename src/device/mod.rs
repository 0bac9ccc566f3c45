//! Devices own memory, not math: allocation, module loading, launches and copies live here; each
//! op matches on its tensors' storage and calls its own kernels.
//!
//! Without the `cuda` feature [`CudaBuf`] is an uninhabited type, so no CUDA tensor can exist and
//! every CUDA branch in the ops compiles away.

#[cfg(feature = "cuda")]
pub mod cuda;

#[cfg(feature = "cuda")]
pub use cuda::CudaBuf;

#[cfg(not(feature = "cuda"))]
mod no_cuda {
    use crate::tensor::DType;

    /// Device memory; cannot exist in a build without the `cuda` feature.
    #[derive(Debug, Clone, PartialEq)]
    pub enum CudaBuf {}

    impl CudaBuf {
        pub fn dtype(&self) -> DType {
            match *self {}
        }
        pub fn len(&self) -> usize {
            match *self {}
        }
        pub fn is_empty(&self) -> bool {
            match *self {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use no_cuda::CudaBuf;

/// Whether this build has the CUDA backend and a usable GPU is present (`false`, with the reason,
/// otherwise). Never panics, also where no driver is installed.
pub fn cuda_available() -> std::result::Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        cuda::CudaDev::get().map(|d| d.describe()).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this engram was built without the `cuda` feature".into())
    }
}

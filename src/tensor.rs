//! `Tensor`: an immutable, contiguous, row-major array with an identity on the autograd tape.
//!
//! Cloning a tensor is cheap (an `Arc`). Tracked tensors are never written in place; the only
//! in-place write is [`Tensor::update`], used by optimizers on parameters between steps (copy on
//! write, so a tape that still holds the old value keeps it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{shape_err, Error, Result};
use crate::device::CudaBuf;
use crate::float::Float;

/// Element types. The CPU kernels implement f32 (working precision) and f64 (gradient checks);
/// bf16/f16 are storage types for the GPU backend; I64 holds token ids, labels and masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// Where a tensor lives. Devices own memory, not math: ops match on the storage themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    /// The CUDA GPU (index 0; the `cuda` feature).
    Cuda,
}

/// The memory of one tensor: host vectors, or a device buffer (`cuda` feature; an uninhabited
/// type without it).
#[derive(Debug, Clone, PartialEq)]
pub enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    Cuda(CudaBuf),
}

impl Buf {
    pub fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::F64(_) => DType::F64,
            Buf::I64(_) => DType::I64,
            Buf::Cuda(c) => c.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
            Buf::I64(v) => v.len(),
            Buf::Cuda(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn zeros(dtype: DType, n: usize) -> Result<Buf> {
        Ok(match dtype {
            DType::F32 => Buf::F32(vec![0.0; n]),
            DType::F64 => Buf::F64(vec![0.0; n]),
            DType::I64 => Buf::I64(vec![0; n]),
            other => {
                return Err(Error::DType { op: "zeros", dtype: other, detail: "no CPU storage".into() })
            }
        })
    }

    pub fn device(&self) -> Device {
        match self {
            Buf::Cuda(_) => Device::Cuda,
            _ => Device::Cpu,
        }
    }

    /// `self += other`, elementwise (gradient accumulation).
    pub(crate) fn add_assign(&mut self, other: &Buf) -> Result<()> {
        match (self, other) {
            #[cfg(feature = "cuda")]
            (Buf::Cuda(CudaBuf::F32(a)), Buf::Cuda(CudaBuf::F32(b))) => {
                crate::device::cuda::axpy(a, b, 1.0)?
            }
            (Buf::F32(a), Buf::F32(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += *y),
            (Buf::F64(a), Buf::F64(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += *y),
            (a, b) => {
                return Err(Error::Autograd(format!(
                    "cannot accumulate a {:?} gradient into a {:?} slot",
                    b.dtype(),
                    a.dtype()
                )))
            }
        }
        Ok(())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Identity of a tensor on the tape and in gradient maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub(crate) fn fresh() -> TensorId {
        TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
struct Inner {
    id: TensorId,
    shape: Vec<usize>,
    data: Arc<Buf>,
    requires_grad: bool,
    /// Data derived from `data` once and kept, with the name of what it is (inference keeps its
    /// linear weights packed for the GEMM); emptied by [`Tensor::update`], so it never outlives
    /// the values it came from.
    derived: OnceLock<(&'static str, Arc<Buf>)>,
}

#[derive(Debug, Clone)]
pub struct Tensor(Arc<Inner>);

impl Tensor {
    /// A tensor over `data` with `shape`; errors if the element count disagrees.
    pub fn from_buf(data: Buf, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return shape_err(
                "tensor",
                format!("shape {shape:?} holds {n} elements but {} were given", data.len()),
            );
        }
        Ok(Tensor::from_parts(data, shape.to_vec(), false))
    }

    pub(crate) fn from_parts(data: Buf, shape: Vec<usize>, requires_grad: bool) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor(Arc::new(Inner { id: TensorId::fresh(), shape, data: Arc::new(data), requires_grad, derived: OnceLock::new() }))
    }

    pub fn from_vec<T: Float>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(T::wrap(data), shape)
    }

    pub fn from_ids(ids: Vec<i64>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(Buf::I64(ids), shape)
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(Buf::zeros(dtype, shape.iter().product())?, shape)
    }

    pub fn scalar<T: Float>(x: T) -> Tensor {
        Tensor::from_parts(T::wrap(vec![x]), vec![], false)
    }

    /// The same data as a new leaf that receives a gradient (a parameter or an input under test).
    pub fn requires_grad(&self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape: self.0.shape.clone(),
            data: self.0.data.clone(),
            requires_grad: true,
            derived: OnceLock::new(),
        }))
    }

    /// The same data with new identity, cut off from the tape (like `torch.Tensor.detach`).
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape: self.0.shape.clone(),
            data: self.0.data.clone(),
            requires_grad: false,
            derived: OnceLock::new(),
        }))
    }

    /// Same storage, another shape (no copy). Used by the `reshape` op.
    pub(crate) fn with_shape(&self, shape: Vec<usize>, requires_grad: bool) -> Tensor {
        Tensor(Arc::new(Inner { id: TensorId::fresh(), shape, data: self.0.data.clone(), requires_grad, derived: OnceLock::new() }))
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.0.data.len()
    }
    pub fn dtype(&self) -> DType {
        self.0.data.dtype()
    }
    pub fn device(&self) -> Device {
        self.0.data.device()
    }

    /// A copy on `device` (an untracked leaf; call [`Tensor::requires_grad`] for a parameter).
    /// Errors with the reason when the device is not available (no `cuda` feature, no driver, no GPU).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.detach());
        }
        match device {
            Device::Cpu => self.to_cpu(),
            Device::Cuda => self.to_cuda(),
        }
    }

    #[cfg(feature = "cuda")]
    fn to_cuda(&self) -> Result<Tensor> {
        let dev = crate::device::cuda::CudaDev::get()?;
        let buf = match &*self.0.data {
            Buf::F32(v) => CudaBuf::F32(dev.htod(v)?),
            Buf::I64(v) => CudaBuf::I64(dev.htod(v)?),
            Buf::F64(_) => {
                return Err(Error::DType { op: "to_device", dtype: DType::F64, detail: "the CUDA backend stores f32 (and i64 ids)".into() })
            }
            Buf::Cuda(_) => unreachable!("checked by to_device"),
        };
        Ok(Tensor::from_parts(Buf::Cuda(buf), self.shape().to_vec(), false))
    }

    #[cfg(not(feature = "cuda"))]
    fn to_cuda(&self) -> Result<Tensor> {
        Err(Error::Device(crate::device::cuda_available().unwrap_err()))
    }

    /// A host copy (an untracked leaf); a plain detach for CPU tensors.
    pub fn to_cpu(&self) -> Result<Tensor> {
        match &*self.0.data {
            Buf::Cuda(c) => Ok(Tensor::from_parts(cuda_to_host(c)?, self.shape().to_vec(), false)),
            _ => Ok(self.detach()),
        }
    }

    /// The device buffer, when this tensor lives on the GPU.
    pub fn cuda(&self) -> Option<&CudaBuf> {
        match &*self.0.data {
            Buf::Cuda(c) => Some(c),
            _ => None,
        }
    }

    pub fn is_cuda(&self) -> bool {
        self.cuda().is_some()
    }

    /// The f32 device slice, or an error naming `op`.
    #[cfg(feature = "cuda")]
    pub fn cuda_f32(&self, op: &'static str) -> Result<&cudarc::driver::CudaSlice<f32>> {
        match self.cuda() {
            Some(CudaBuf::F32(s)) => Ok(s),
            _ => Err(Error::DType { op, dtype: self.dtype(), detail: format!("expected an f32 CUDA tensor, got {:?} on {:?}", self.dtype(), self.device()) }),
        }
    }

    /// The i64 device slice (ids, masks, labels), or an error naming `op`.
    #[cfg(feature = "cuda")]
    pub fn cuda_i64(&self, op: &'static str) -> Result<&cudarc::driver::CudaSlice<i64>> {
        match self.cuda() {
            Some(CudaBuf::I64(s)) => Ok(s),
            _ => Err(Error::DType { op, dtype: self.dtype(), detail: format!("expected i64 ids on CUDA, got {:?} on {:?}", self.dtype(), self.device()) }),
        }
    }

    /// In-place write of a CUDA parameter (optimizer steps), copy on write like [`Tensor::update`].
    #[cfg(feature = "cuda")]
    pub fn update_cuda(&mut self, f: impl FnOnce(&mut cudarc::driver::CudaSlice<f32>) -> Result<()>) -> Result<()> {
        let dtype = self.dtype();
        let inner = Arc::make_mut(&mut self.0);
        inner.derived = OnceLock::new();
        match Arc::make_mut(&mut inner.data) {
            Buf::Cuda(CudaBuf::F32(s)) => f(s),
            _ => Err(Error::DType { op: "update_cuda", dtype, detail: "expected an f32 CUDA tensor".into() }),
        }
    }
    pub fn is_tracked(&self) -> bool {
        self.0.requires_grad
    }
    pub fn buf(&self) -> &Buf {
        &self.0.data
    }

    /// Borrow the elements as `T`; errors naming `op` when the dtype differs.
    pub fn data<T: Float>(&self, op: &'static str) -> Result<&[T]> {
        T::slice(&self.0.data).ok_or_else(|| Error::DType {
            op,
            dtype: self.dtype(),
            detail: format!("expected {:?}", T::DTYPE),
        })
    }

    pub fn ids(&self, op: &'static str) -> Result<&[i64]> {
        match &*self.0.data {
            Buf::I64(v) => Ok(v),
            _ => Err(Error::DType { op, dtype: self.dtype(), detail: "expected I64 ids".into() }),
        }
    }

    /// Elements converted to f64 (any dtype, copied from the GPU when needed); for tests,
    /// metrics and printing. Panics only if a device copy fails.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &*self.0.data {
            Buf::Cuda(c) => Tensor::from_parts(cuda_to_host(c).expect("device-to-host copy"), self.shape().to_vec(), false).to_f64_vec(),
            Buf::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Buf::F64(v) => v.clone(),
            Buf::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Convert between float dtypes (a new untracked tensor).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let v = self.to_f64_vec();
        let buf = match dtype {
            DType::F32 => Buf::F32(v.into_iter().map(|x| x as f32).collect()),
            DType::F64 => Buf::F64(v),
            DType::I64 => Buf::I64(v.into_iter().map(|x| x as i64).collect()),
            other => {
                return Err(Error::DType { op: "to_dtype", dtype: other, detail: "no CPU storage".into() })
            }
        };
        Tensor::from_buf(buf, self.shape())
    }

    /// The scalar value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("item", format!("expected one element, tensor has shape {:?}", self.shape()));
        }
        Ok(self.to_f64_vec()[0])
    }

    /// Data derived from this tensor's current values by `make` — `kind` names what it is —
    /// computed on first use and kept with the tensor until [`Tensor::update`] changes the values
    /// (the CPU `linear` keeps an inference weight packed for its GEMM). One slot: a second kind
    /// asked of the same tensor is made each time, never confused with the first.
    pub(crate) fn derived(&self, kind: &'static str, make: impl FnOnce() -> Buf) -> Arc<Buf> {
        let mut make = Some(make);
        let (k, buf) = self.0.derived.get_or_init(|| (kind, Arc::new((make.take().expect("once"))())));
        match make {
            Some(make) if *k != kind => Arc::new(make()),
            _ => buf.clone(),
        }
    }

    /// Write into this tensor's elements in place, keeping its identity (optimizer steps).
    /// Copy on write: if a tape or another handle still shares the data, it keeps the old values.
    pub fn update<T: Float>(&mut self, f: impl FnOnce(&mut [T])) -> Result<()> {
        let dtype = self.dtype();
        let inner = Arc::make_mut(&mut self.0);
        inner.derived = OnceLock::new();
        let s = T::slice_mut(Arc::make_mut(&mut inner.data)).ok_or_else(|| Error::DType {
            op: "update",
            dtype,
            detail: format!("expected {:?}", T::DTYPE),
        })?;
        f(s);
        Ok(())
    }
}

#[cfg(feature = "cuda")]
fn cuda_to_host(c: &CudaBuf) -> Result<Buf> {
    let dev = crate::device::cuda::CudaDev::get()?;
    Ok(match c {
        CudaBuf::F32(s) => Buf::F32(dev.dtoh(s, s.len())?),
        CudaBuf::I64(s) => Buf::I64(dev.dtoh(s, s.len())?),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_to_host(c: &CudaBuf) -> Result<Buf> {
    match *c {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_data_is_kept_per_kind_and_dropped_on_update() {
        let mut t = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let calls = std::cell::Cell::new(0);
        let make = |x: f32| {
            calls.set(calls.get() + 1);
            Buf::F32(vec![x])
        };
        let a = t.derived("a", || make(1.0));
        let a2 = t.derived("a", || make(9.0));
        assert!(Arc::ptr_eq(&a, &a2) && calls.get() == 1, "kept after the first call");
        let b = t.derived("b", || make(2.0));
        assert_eq!((b.len(), calls.get()), (1, 2));
        assert!(matches!(&*b, Buf::F32(v) if v[0] == 2.0), "another kind is never the first one's data");
        t.update::<f32>(|v| v[0] = 5.0).unwrap();
        let a3 = t.derived("a", || make(3.0));
        assert!(matches!(&*a3, Buf::F32(v) if v[0] == 3.0), "update empties the slot");
    }
}

//! `Tensor`: an immutable, contiguous, row-major array with an identity on the autograd tape.
//!
//! Cloning a tensor is cheap (an `Arc`). Tracked tensors are never written in place; the only
//! in-place write is [`Tensor::update`], used by optimizers on parameters between steps (copy on
//! write, so a tape that still holds the old value keeps it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{shape_err, Error, Result};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
}

/// Host memory of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuBuf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl CpuBuf {
    pub fn dtype(&self) -> DType {
        match self {
            CpuBuf::F32(_) => DType::F32,
            CpuBuf::F64(_) => DType::F64,
            CpuBuf::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuBuf::F32(v) => v.len(),
            CpuBuf::F64(v) => v.len(),
            CpuBuf::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn zeros(dtype: DType, n: usize) -> Result<CpuBuf> {
        Ok(match dtype {
            DType::F32 => CpuBuf::F32(vec![0.0; n]),
            DType::F64 => CpuBuf::F64(vec![0.0; n]),
            DType::I64 => CpuBuf::I64(vec![0; n]),
            other => {
                return Err(Error::DType { op: "zeros", dtype: other, detail: "no CPU storage".into() })
            }
        })
    }

    /// `self += other`, elementwise (gradient accumulation).
    pub(crate) fn add_assign(&mut self, other: &CpuBuf) -> Result<()> {
        match (self, other) {
            (CpuBuf::F32(a), CpuBuf::F32(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += *y),
            (CpuBuf::F64(a), CpuBuf::F64(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += *y),
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
    data: Arc<CpuBuf>,
    requires_grad: bool,
}

#[derive(Debug, Clone)]
pub struct Tensor(Arc<Inner>);

impl Tensor {
    /// A tensor over `data` with `shape`; errors if the element count disagrees.
    pub fn from_buf(data: CpuBuf, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return shape_err(
                "tensor",
                format!("shape {shape:?} holds {n} elements but {} were given", data.len()),
            );
        }
        Ok(Tensor::from_parts(data, shape.to_vec(), false))
    }

    pub(crate) fn from_parts(data: CpuBuf, shape: Vec<usize>, requires_grad: bool) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor(Arc::new(Inner { id: TensorId::fresh(), shape, data: Arc::new(data), requires_grad }))
    }

    pub fn from_vec<T: Float>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(T::wrap(data), shape)
    }

    pub fn from_ids(ids: Vec<i64>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(CpuBuf::I64(ids), shape)
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buf(CpuBuf::zeros(dtype, shape.iter().product())?, shape)
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
        }))
    }

    /// The same data with new identity, cut off from the tape (like `torch.Tensor.detach`).
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape: self.0.shape.clone(),
            data: self.0.data.clone(),
            requires_grad: false,
        }))
    }

    /// Same storage, another shape (no copy). Used by the `reshape` op.
    pub(crate) fn with_shape(&self, shape: Vec<usize>, requires_grad: bool) -> Tensor {
        Tensor(Arc::new(Inner { id: TensorId::fresh(), shape, data: self.0.data.clone(), requires_grad }))
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
        Device::Cpu
    }
    pub fn is_tracked(&self) -> bool {
        self.0.requires_grad
    }
    pub fn buf(&self) -> &CpuBuf {
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
            CpuBuf::I64(v) => Ok(v),
            _ => Err(Error::DType { op, dtype: self.dtype(), detail: "expected I64 ids".into() }),
        }
    }

    /// Elements converted to f64 (any dtype); for tests, metrics and printing.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &*self.0.data {
            CpuBuf::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuBuf::F64(v) => v.clone(),
            CpuBuf::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Convert between float dtypes (a new untracked tensor).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let v = self.to_f64_vec();
        let buf = match dtype {
            DType::F32 => CpuBuf::F32(v.into_iter().map(|x| x as f32).collect()),
            DType::F64 => CpuBuf::F64(v),
            DType::I64 => CpuBuf::I64(v.into_iter().map(|x| x as i64).collect()),
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

    /// Write into this tensor's elements in place, keeping its identity (optimizer steps).
    /// Copy on write: if a tape or another handle still shares the data, it keeps the old values.
    pub fn update<T: Float>(&mut self, f: impl FnOnce(&mut [T])) -> Result<()> {
        let dtype = self.dtype();
        let inner = Arc::make_mut(&mut self.0);
        let s = T::slice_mut(Arc::make_mut(&mut inner.data)).ok_or_else(|| Error::DType {
            op: "update",
            dtype,
            detail: format!("expected {:?}", T::DTYPE),
        })?;
        f(s);
        Ok(())
    }
}

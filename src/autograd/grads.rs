//! Gradient storage: one buffer per tracked leaf, keyed by tensor id.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor, TensorId};

/// Where backward kernels accumulate. A slot starts at zero the first time it is touched, and
/// kernels always `+=` into it, so residual branches and tied weights need nothing special.
pub struct GradSink<'a> {
    map: &'a mut HashMap<TensorId, Buf>,
}

impl<'a> GradSink<'a> {
    pub(crate) fn new(map: &'a mut HashMap<TensorId, Buf>) -> Self {
        GradSink { map }
    }

    /// Whether `t` receives a gradient at all (skip its backward kernel when not).
    pub fn wants(&self, t: &Tensor) -> bool {
        t.is_tracked()
    }

    /// Run `f` on the gradient slot of `t` (zeros if new). Does nothing for untracked tensors.
    /// The slot is taken out of the map while `f` runs, so an op whose inputs alias (q = k) still
    /// accumulates both contributions.
    pub fn accumulate<T: Float>(&mut self, t: &Tensor, f: impl FnOnce(&mut [T])) -> Result<()> {
        if !t.is_tracked() {
            return Ok(());
        }
        let mut buf = match self.map.remove(&t.id()) {
            Some(b) => b,
            None => Buf::zeros(t.dtype(), t.numel())?,
        };
        let slot = T::slice_mut(&mut buf).ok_or_else(|| {
            Error::Autograd(format!("gradient of {:?} tensor written as {:?}", t.dtype(), T::DTYPE))
        })?;
        f(slot);
        match self.map.entry(t.id()) {
            Entry::Occupied(mut e) => e.get_mut().add_assign(&buf)?,
            Entry::Vacant(e) => {
                e.insert(buf);
            }
        }
        Ok(())
    }

    /// Run `f` on the device gradient slot of `t` (zeros if new); the CUDA twin of
    /// [`GradSink::accumulate`].
    #[cfg(feature = "cuda")]
    pub fn accumulate_cuda(
        &mut self,
        t: &Tensor,
        f: impl FnOnce(&mut cudarc::driver::CudaSlice<f32>) -> Result<()>,
    ) -> Result<()> {
        use crate::device::CudaBuf;
        if !t.is_tracked() {
            return Ok(());
        }
        let dev = crate::device::cuda::CudaDev::get()?;
        let mut buf = match self.map.remove(&t.id()) {
            Some(b) => b,
            None => Buf::Cuda(CudaBuf::F32(dev.zeros::<f32>(t.numel())?)),
        };
        match &mut buf {
            Buf::Cuda(CudaBuf::F32(slot)) => f(slot)?,
            other => {
                return Err(Error::Autograd(format!("gradient of a CUDA f32 tensor found as {:?} on {:?}", other.dtype(), other.device())))
            }
        }
        match self.map.entry(t.id()) {
            Entry::Occupied(mut e) => e.get_mut().add_assign(&buf)?,
            Entry::Vacant(e) => {
                e.insert(buf);
            }
        }
        Ok(())
    }

    /// Add a freshly computed device gradient to `t`'s slot (moved in when the slot is new).
    #[cfg(feature = "cuda")]
    pub fn add_cuda_owned(&mut self, t: &Tensor, g: cudarc::driver::CudaSlice<f32>) -> Result<()> {
        self.add_owned(t, Buf::Cuda(crate::device::CudaBuf::F32(g)))
    }

    /// Add a freshly made gradient buffer (same layout) to `t`'s slot: it becomes the slot when
    /// there is none yet (no copy), else it is added in.
    pub fn add_owned(&mut self, t: &Tensor, g: Buf) -> Result<()> {
        if !t.is_tracked() {
            return Ok(());
        }
        match self.map.entry(t.id()) {
            Entry::Occupied(mut e) => e.get_mut().add_assign(&g)?,
            Entry::Vacant(e) => {
                e.insert(g);
            }
        }
        Ok(())
    }

    /// Add a whole buffer (same layout) to `t`'s slot.
    pub fn add_buf(&mut self, t: &Tensor, g: &Buf) -> Result<()> {
        if !t.is_tracked() {
            return Ok(());
        }
        match self.map.entry(t.id()) {
            Entry::Occupied(mut e) => e.get_mut().add_assign(g)?,
            Entry::Vacant(e) => {
                e.insert(g.clone());
            }
        }
        Ok(())
    }
}

/// The gradients of the tracked leaves after a backward pass.
#[derive(Debug, Default, Clone)]
pub struct Grads {
    map: HashMap<TensorId, Buf>,
}

impl Grads {
    /// Take `t`'s gradient out.
    pub(crate) fn take(&mut self, t: &Tensor) -> Option<Buf> {
        self.map.remove(&t.id())
    }

    pub(crate) fn from_map(map: HashMap<TensorId, Buf>) -> Self {
        Grads { map }
    }

    pub fn get_buf(&self, t: &Tensor) -> Option<&Buf> {
        self.map.get(&t.id())
    }

    /// The gradient of `t` as a slice of `T`; `None` if `t` got no gradient.
    pub fn get<T: Float>(&self, t: &Tensor) -> Option<&[T]> {
        self.map.get(&t.id()).and_then(T::slice)
    }

    /// The gradient of `t` as an untracked tensor of `t`'s shape.
    pub fn tensor(&self, t: &Tensor) -> Option<Tensor> {
        self.map.get(&t.id()).map(|b| Tensor::from_buf(b.clone(), t.shape()).expect("gradient has its tensor's size"))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Add another pass's gradients (gradient accumulation over micro-batches).
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        for (id, g) in other.map {
            match self.map.entry(id) {
                Entry::Occupied(mut e) => e.get_mut().add_assign(&g)?,
                Entry::Vacant(e) => {
                    e.insert(g);
                }
            }
        }
        Ok(())
    }

    /// Multiply every gradient by `s` (averaging accumulated micro-batches, clipping).
    pub fn scale(&mut self, s: f64) {
        for g in self.map.values_mut() {
            match g {
                Buf::F32(v) => v.iter_mut().for_each(|x| *x *= s as f32),
                Buf::F64(v) => v.iter_mut().for_each(|x| *x *= s),
                Buf::I64(_) => {}
                #[cfg(feature = "cuda")]
                Buf::Cuda(crate::device::CudaBuf::F32(v)) => {
                    // A failure here surfaces at the next device call on the same stream.
                    let _ = crate::device::cuda::scale_inplace(v, s as f32);
                }
                Buf::Cuda(_) => {}
            }
        }
    }

    /// Mutable access for in-place gradient edits.
    pub(crate) fn get_mut(&mut self, t: &Tensor) -> Option<&mut Buf> {
        self.map.get_mut(&t.id())
    }
}

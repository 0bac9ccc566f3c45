//! Gradient storage: one buffer per tracked leaf, keyed by tensor id.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::tensor::{CpuBuf, Tensor, TensorId};

/// Where backward kernels accumulate. A slot starts at zero the first time it is touched, and
/// kernels always `+=` into it, so residual branches and tied weights need nothing special.
pub struct GradSink<'a> {
    map: &'a mut HashMap<TensorId, CpuBuf>,
}

impl<'a> GradSink<'a> {
    pub(crate) fn new(map: &'a mut HashMap<TensorId, CpuBuf>) -> Self {
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
            None => CpuBuf::zeros(t.dtype(), t.numel())?,
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

    /// Add a whole buffer (same layout) to `t`'s slot.
    pub fn add_buf(&mut self, t: &Tensor, g: &CpuBuf) -> Result<()> {
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
    map: HashMap<TensorId, CpuBuf>,
}

impl Grads {
    pub(crate) fn from_map(map: HashMap<TensorId, CpuBuf>) -> Self {
        Grads { map }
    }

    pub fn get_buf(&self, t: &Tensor) -> Option<&CpuBuf> {
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
                CpuBuf::F32(v) => v.iter_mut().for_each(|x| *x *= s as f32),
                CpuBuf::F64(v) => v.iter_mut().for_each(|x| *x *= s),
                CpuBuf::I64(_) => {}
            }
        }
    }

    /// Mutable access for in-place gradient edits.
    pub(crate) fn get_mut(&mut self, t: &Tensor) -> Option<&mut CpuBuf> {
        self.map.get_mut(&t.id())
    }
}

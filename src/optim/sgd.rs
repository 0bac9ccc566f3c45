//! SGD with momentum, step for step as `torch.optim.SGD`.

use std::collections::HashMap;

use super::ParamGroup;
use crate::autograd::Grads;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::tensor::{Buf, TensorId};
use crate::with_float;

#[derive(Debug, Clone, Copy, Default)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

#[derive(Debug, Clone)]
pub struct Sgd {
    pub config: SgdConfig,
    buffers: HashMap<TensorId, Buf>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Sgd { config, buffers: HashMap::new() }
    }

    /// `d = g + wd·p`; `buf ← d` (first step) else `buf ← μ·buf + (1 − dampening)·d`;
    /// `d ← d + μ·buf` (Nesterov) or `d ← buf`; `p ← p − lr·d`. Weight decay is L2 (coupled),
    /// as in PyTorch.
    pub fn step(&mut self, groups: &mut [ParamGroup], grads: &Grads, lr: f64) -> Result<()> {
        let SgdConfig { momentum, dampening, nesterov } = self.config;
        for group in groups.iter_mut() {
            let wd = group.weight_decay;
            for p in group.params.iter_mut() {
                let Some(g) = grads.get_buf(p) else { continue };
                if p.is_cuda() {
                    return Err(Error::Device("sgd: the CUDA backend has no SGD kernel yet; use AdamW on the GPU or SGD on the CPU".into()));
                }
                let first = !self.buffers.contains_key(&p.id());
                let buf = self.buffers.entry(p.id()).or_insert_with(|| g.clone());
                with_float!("sgd", p.dtype(), T => {
                    let g = T::slice(g).ok_or_else(|| Error::Autograd("sgd: gradient dtype differs from its parameter".into()))?;
                    let b = T::slice_mut(buf).expect("buffer dtype");
                    let (mu, damp, wdt, lrt) = (T::from_f64(momentum), T::from_f64(1.0 - dampening), T::from_f64(wd), T::from_f64(lr));
                    p.update::<T>(|w| {
                        for i in 0..w.len() {
                            let mut d = g[i];
                            if wd != 0.0 {
                                d += wdt * w[i];
                            }
                            if momentum != 0.0 {
                                b[i] = if first { d } else { mu * b[i] + damp * d };
                                d = if nesterov { d + mu * b[i] } else { b[i] };
                            }
                            w[i] -= lrt * d;
                        }
                    })
                })?;
            }
        }
        Ok(())
    }
}

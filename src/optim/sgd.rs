//! SGD with momentum, step for step as `torch.optim.SGD`; CPU reference and the CUDA kernel
//! `sgd_step_v1` (kernels/sgd.cu). The momentum buffers export by parameter name for `--resume`.

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
    #[cfg(feature = "cuda")]
    cuda_buffers: HashMap<TensorId, cudarc::driver::CudaSlice<f32>>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: HashMap::new(),
            #[cfg(feature = "cuda")]
            cuda_buffers: HashMap::new(),
        }
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
                #[cfg(feature = "cuda")]
                if let Buf::Cuda(crate::device::CudaBuf::F32(gd)) = g {
                    use crate::device::cuda::{cfg_1d, launch, CudaDev};
                    let dev = CudaDev::get()?;
                    let first = !self.cuda_buffers.contains_key(&p.id());
                    let buf = match self.cuda_buffers.entry(p.id()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(dev.zeros::<f32>(p.numel())?),
                    };
                    let n = p.numel() as i64;
                    let (lrf, wdf, muf, dampf) = (lr as f32, wd as f32, momentum as f32, (1.0 - dampening) as f32);
                    let (nest, fst) = (nesterov as i32, first as i32);
                    p.update_cuda(|w| launch!(dev, "sgd", "sgd_step_v1", cfg_1d(n as usize); w, gd, buf, &lrf, &wdf, &muf, &dampf, &nest, &fst, &n))?;
                    continue;
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

impl Sgd {
    /// The momentum buffers as `momentum_buffer.<name>` tensors (empty before the first step).
    pub fn export_state(&self, named: &[(String, &crate::Tensor)]) -> Result<std::collections::BTreeMap<String, crate::Tensor>> {
        let mut out = std::collections::BTreeMap::new();
        for (name, p) in named {
            if let Some(b) = self.buffers.get(&p.id()) {
                out.insert(format!("momentum_buffer.{name}"), crate::Tensor::from_buf(b.clone(), p.shape())?);
            }
            #[cfg(feature = "cuda")]
            if let Some(b) = self.cuda_buffers.get(&p.id()) {
                let dev = crate::device::cuda::CudaDev::get()?;
                out.insert(format!("momentum_buffer.{name}"), crate::Tensor::from_vec(dev.dtoh(b, p.numel())?, p.shape())?);
            }
        }
        Ok(out)
    }

    /// Restore buffers written by [`Sgd::export_state`]; a parameter without one starts fresh.
    pub fn import_state(&mut self, named: &[(String, &crate::Tensor)], state: &std::collections::BTreeMap<String, crate::Tensor>) -> Result<()> {
        for (name, p) in named {
            let Some(b) = state.get(&format!("momentum_buffer.{name}")) else { continue };
            if b.shape() != p.shape() {
                return Err(Error::Autograd(format!("sgd momentum buffer for {name} has shape {:?}, the parameter {:?}", b.shape(), p.shape())));
            }
            #[cfg(feature = "cuda")]
            if p.is_cuda() {
                let dev = crate::device::cuda::CudaDev::get()?;
                self.cuda_buffers.insert(p.id(), dev.htod(b.to_cpu()?.data::<f32>("sgd")?)?);
                continue;
            }
            if b.dtype() != p.dtype() {
                return Err(Error::Autograd(format!("sgd momentum buffer for {name} is {:?}, the parameter {:?}", b.dtype(), p.dtype())));
            }
            self.buffers.insert(p.id(), b.to_cpu()?.buf().clone());
        }
        Ok(())
    }
}

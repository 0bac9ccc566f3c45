//! AdamW (Loshchilov & Hutter), step for step as `torch.optim.AdamW`.

use std::collections::HashMap;

use super::ParamGroup;
use crate::autograd::Grads;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::tensor::{Buf, TensorId};
use crate::with_float;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// HF Trainer's defaults (`adam_beta1 = 0.9`, `adam_beta2 = 0.999`, `adam_epsilon = 1e-8`).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// First and second moments of one parameter, in its dtype.
#[derive(Debug, Clone)]
struct Moments {
    m: Buf,
    v: Buf,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    step: u64,
    state: HashMap<TensorId, Moments>,
    /// Moments (m, v) of CUDA parameters, on the device.
    #[cfg(feature = "cuda")]
    cuda_state: HashMap<TensorId, (cudarc::driver::CudaSlice<f32>, cudarc::driver::CudaSlice<f32>)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            state: HashMap::new(),
            #[cfg(feature = "cuda")]
            cuda_state: HashMap::new(),
        }
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`:
    /// `p ← p·(1 − lr·wd)`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
    /// `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`.
    pub fn step(&mut self, groups: &mut [ParamGroup], grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps } = self.config;
        let t = self.step as i32;
        let step_size = lr / (1.0 - beta1.powi(t));
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for group in groups.iter_mut() {
            let decay = 1.0 - lr * group.weight_decay;
            for p in group.params.iter_mut() {
                let Some(g) = grads.get_buf(p) else { continue };
                #[cfg(feature = "cuda")]
                if let Buf::Cuda(crate::device::CudaBuf::F32(gd)) = g {
                    let dev = crate::device::cuda::CudaDev::get()?;
                    let st = match self.cuda_state.entry(p.id()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert((dev.zeros::<f32>(p.numel())?, dev.zeros::<f32>(p.numel())?)),
                    };
                    let (m, v) = (&mut st.0, &mut st.1);
                    let n = p.numel() as i64;
                    // The same f64→f32 constants as the CPU kernel computes.
                    let (decay, omb1, b2, omb2) = (decay as f32, (1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32);
                    let (epsf, ss, bc2) = (eps as f32, step_size as f32, bc2_sqrt as f32);
                    p.update_cuda(|w| {
                        crate::device::cuda::launch!(dev, "adamw", "adamw_step_v1", crate::device::cuda::cfg_1d(n as usize);
                            w, gd, m, v, &decay, &omb1, &b2, &omb2, &epsf, &ss, &bc2, &n)
                    })?;
                    continue;
                }
                let st = match self.state.entry(p.id()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(Moments {
                        m: Buf::zeros(p.dtype(), p.numel())?,
                        v: Buf::zeros(p.dtype(), p.numel())?,
                    }),
                };
                with_float!("adamw", p.dtype(), T => {
                    let g = T::slice(g).ok_or_else(|| Error::Autograd("adamw: gradient dtype differs from its parameter".into()))?;
                    let m = T::slice_mut(&mut st.m).expect("state dtype");
                    let v = T::slice_mut(&mut st.v).expect("state dtype");
                    p.update::<T>(|w| adamw_kernel(w, g, m, v, decay, beta1, beta2, eps, step_size, bc2_sqrt))
                })?;
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn adamw_kernel<T: Float>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step_size: f64,
    bc2_sqrt: f64,
) {
    let (decay, b1, b2) = (T::from_f64(decay), T::from_f64(1.0 - beta1), T::from_f64(beta2));
    let (one_m_b2, eps, step_size, bc2_sqrt) =
        (T::from_f64(1.0 - beta2), T::from_f64(eps), T::from_f64(step_size), T::from_f64(bc2_sqrt));
    // Elementwise and order-free, so chunks run in parallel and the zipped loop (no index
    // bounds checks) vectorises; sqrt and division are correctly rounded either way, so the
    // result is bit-for-bit the scalar loop's.
    type Chunks<'a, T> = (((&'a mut [T], &'a [T]), &'a mut [T]), &'a mut [T]);
    let body = |(((w, g), m), v): Chunks<T>| {
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *w *= decay;
            *m += b1 * (g - *m);
            *v = *v * b2 + one_m_b2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *w -= step_size * *m / denom;
        }
    };
    const CHUNK: usize = 1 << 14;
    use rayon::prelude::*;
    w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(body);
}

impl AdamW {
    /// The moments of the named parameters as host tensors `m.<name>`, `v.<name>` (for
    /// checkpoints); parameters without state yet are left out.
    pub fn export_state(&self, named: &[(String, &crate::Tensor)]) -> Result<std::collections::BTreeMap<String, crate::Tensor>> {
        let mut out = std::collections::BTreeMap::new();
        for (name, p) in named {
            if let Some(st) = self.state.get(&p.id()) {
                out.insert(format!("m.{name}"), crate::Tensor::from_buf(st.m.clone(), p.shape())?);
                out.insert(format!("v.{name}"), crate::Tensor::from_buf(st.v.clone(), p.shape())?);
            }
            #[cfg(feature = "cuda")]
            if let Some((m, v)) = self.cuda_state.get(&p.id()) {
                let dev = crate::device::cuda::CudaDev::get()?;
                out.insert(format!("m.{name}"), crate::Tensor::from_vec(dev.dtoh(m, p.numel())?, p.shape())?);
                out.insert(format!("v.{name}"), crate::Tensor::from_vec(dev.dtoh(v, p.numel())?, p.shape())?);
            }
        }
        Ok(out)
    }

    /// Restore moments saved by [`AdamW::export_state`] for the (possibly new) parameter
    /// tensors `named`, and the step count.
    pub fn import_state(&mut self, steps: u64, named: &[(String, &crate::Tensor)], state: &std::collections::BTreeMap<String, crate::Tensor>) -> Result<()> {
        self.step = steps;
        for (name, p) in named {
            let (Some(m), Some(v)) = (state.get(&format!("m.{name}")), state.get(&format!("v.{name}"))) else { continue };
            if m.shape() != p.shape() || v.shape() != p.shape() {
                return Err(Error::Autograd(format!("adamw state for {name} has shape {:?}, the parameter {:?}", m.shape(), p.shape())));
            }
            #[cfg(feature = "cuda")]
            if p.is_cuda() {
                let dev = crate::device::cuda::CudaDev::get()?;
                let (mh, vh) = (m.to_cpu()?, v.to_cpu()?);
                self.cuda_state.insert(p.id(), (dev.htod(mh.data::<f32>("adamw")?)?, dev.htod(vh.data::<f32>("adamw")?)?));
                continue;
            }
            self.state.insert(p.id(), Moments { m: m.to_cpu()?.buf().clone(), v: v.to_cpu()?.buf().clone() });
        }
        Ok(())
    }
}

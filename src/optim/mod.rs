//! Optimizers and their companions, with PyTorch/HF semantics: [`AdamW`] (decoupled weight decay,
//! bias correction), [`Sgd`] (momentum, dampening, Nesterov), parameter groups with the HF
//! no-decay rule, transformers' learning-rate schedules and global grad-norm clipping.

mod adamw;
mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use sgd::{Sgd, SgdConfig};

use crate::autograd::Grads;
use crate::error::Result;
use crate::tensor::{Buf, Tensor};

/// Parameters that share optimizer hyper-parameters (today: the weight decay).
pub struct ParamGroup<'a> {
    pub params: Vec<&'a mut Tensor>,
    pub weight_decay: f64,
}

/// HF Trainer's rule: no weight decay on biases and on LayerNorm parameters.
pub fn no_decay(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("bias") || lower.contains("layernorm") || lower.contains("layer_norm")
}

/// Split named parameters into the decay group (`weight_decay`) and the no-decay group (0),
/// as `transformers.Trainer.create_optimizer` does.
pub fn hf_param_groups<'a>(named: Vec<(String, &'a mut Tensor)>, weight_decay: f64) -> Vec<ParamGroup<'a>> {
    let (mut decay, mut plain) = (Vec::new(), Vec::new());
    for (name, t) in named {
        if no_decay(&name) {
            plain.push(t)
        } else {
            decay.push(t)
        }
    }
    vec![ParamGroup { params: decay, weight_decay }, ParamGroup { params: plain, weight_decay: 0.0 }]
}

/// Scale the gradients of `params` so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping — `torch.nn.utils.clip_grad_norm_(params, max_norm)` (coefficient
/// `max_norm / (norm + 1e-6)`, clamped to 1).
pub fn clip_grad_norm(grads: &mut Grads, params: &[&Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for p in params {
        if let Some(g) = grads.get_buf(p) {
            sq += match g {
                Buf::F32(v) => v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>(),
                Buf::F64(v) => v.iter().map(|&x| x * x).sum(),
                Buf::I64(_) => 0.0,
                #[cfg(feature = "cuda")]
                Buf::Cuda(crate::device::CudaBuf::F32(v)) => {
                    crate::device::cuda::sum_squares(v, v.len())?
                }
                Buf::Cuda(_) => 0.0,
            };
        }
    }
    let norm = sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    for p in params {
        match grads.get_mut(p) {
            Some(Buf::F32(v)) => {
                let c = coef as f32;
                v.iter_mut().for_each(|x| *x *= c)
            }
            Some(Buf::F64(v)) => v.iter_mut().for_each(|x| *x *= coef),
            #[cfg(feature = "cuda")]
            Some(Buf::Cuda(crate::device::CudaBuf::F32(v))) => {
                crate::device::cuda::scale_inplace(v, coef as f32)?
            }
            _ => {}
        }
    }
    Ok(norm)
}

//! Fused scaled-dot-product self-attention with a key padding mask: one op, one node.

use rayon::prelude::*;

use super::gemm::{gemm, MatRef};
use super::same_dtype;
use super::softmax::{softmax_row_backward, softmax_row_in_place};
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, value_err, Result};
use crate::float::Float;
use crate::tensor::{CpuBuf, Tensor};
use crate::with_float;

/// `softmax(q·kᵀ·scale + mask) · v` per batch and head.
///
/// `q (B, NH, Tq, HS)`, `k, v (B, NH, Tk, HS)`, `key_mask (B, Tk)` of I64 with 1 = attend and
/// 0 = padding (the HF `attention_mask`); output `(B, NH, Tq, HS)`. PyTorch:
/// `F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :].bool(), scale=scale)`.
///
/// A query whose keys are all padding gets a zero output and passes no gradient (PyTorch gives
/// NaN there; HF's additive mask gives a uniform average over padding). The CPU kernel saves the
/// probabilities `(B, NH, Tq, Tk)` for the backward; the GPU kernel recomputes them.
pub fn attention(tape: &Tape, q: &Tensor, k: &Tensor, v: &Tensor, key_mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    const OP: &str = "attention";
    let (sq, sk, sv) = (q.shape(), k.shape(), v.shape());
    if sq.len() != 4 || sk.len() != 4 || sk != sv || sq[0] != sk[0] || sq[1] != sk[1] || sq[3] != sk[3] {
        return shape_err(OP, format!("need q (B, NH, Tq, HS) and k, v (B, NH, Tk, HS); got q {sq:?}, k {sk:?}, v {sv:?}"));
    }
    let (b, nh, tq, hs, tk) = (sq[0], sq[1], sq[2], sq[3], sk[2]);
    let mask = match key_mask {
        None => None,
        Some(m) => {
            if m.shape() != [b, tk] {
                return shape_err(OP, format!("key_mask {:?} must be (B, Tk) = ({b}, {tk})", m.shape()));
            }
            let ids = m.ids(OP)?;
            if let Some(bad) = ids.iter().find(|&&x| x != 0 && x != 1) {
                return value_err(OP, format!("key_mask holds {bad}; it must be 0 (padding) or 1"));
            }
            Some(ids.to_vec())
        }
    };
    same_dtype(OP, q, k)?;
    with_float!(OP, same_dtype(OP, q, v)?, T => {
        let (qd, kd, vd) = (q.data::<T>(OP)?, k.data::<T>(OP)?, v.data::<T>(OP)?);
        let s = T::from_f64(scale);
        let mut out = vec![T::ZERO; b * nh * tq * hs];
        let mut probs = vec![T::ZERO; b * nh * tq * tk];
        out.par_chunks_mut(tq * hs).zip(probs.par_chunks_mut(tq * tk)).enumerate().for_each(|(bh, (o, p))| {
            let (qh, kh, vh) = (&qd[bh * tq * hs..][..tq * hs], &kd[bh * tk * hs..][..tk * hs], &vd[bh * tk * hs..][..tk * hs]);
            // S = q·kᵀ, then scale + mask, row softmax → P; O = P·v.
            gemm(p, MatRef::new(qh, tq, hs, false), MatRef::new(kh, hs, tk, true), false);
            let keep = mask.as_deref().map(|m| &m[(bh / nh) * tk..][..tk]);
            for row in p.chunks_mut(tk) {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = if keep.is_none_or(|m| m[j] != 0) { *x * s } else { T::neg_infinity() };
                }
                softmax_row_in_place(row);
            }
            gemm(o, MatRef::new(p, tq, tk, false), MatRef::new(vh, tk, hs, false), false);
        });
        let dims = AttnDims { tq, tk, hs };
        Ok(tape.record(OP, &[q, k, v], T::wrap(out), sq.to_vec(), |_| AttentionBwd { dims, scale: s, probs }))
    })
}

#[derive(Clone, Copy)]
struct AttnDims {
    tq: usize,
    tk: usize,
    hs: usize,
}

struct AttentionBwd<T> {
    dims: AttnDims,
    scale: T,
    probs: Vec<T>,
}

impl<T: Float> Backward for AttentionBwd<T> {
    // O = P·V, P = softmax(S), S = scale·Q·Kᵀ (+mask):
    //   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
    // Masked entries have P = 0, so they pass no gradient.
    fn backward(&self, inputs: &[Tensor], dout: &CpuBuf, sink: &mut GradSink) -> Result<()> {
        let AttnDims { tq, tk, hs } = self.dims;
        let (qd, kd, vd) = (inputs[0].data::<T>("attention")?, inputs[1].data::<T>("attention")?, inputs[2].data::<T>("attention")?);
        let d_o = T::slice(dout).expect("dout dtype");
        let mut dq = vec![T::ZERO; qd.len()];
        let mut dk = vec![T::ZERO; kd.len()];
        let mut dv = vec![T::ZERO; vd.len()];
        dq.par_chunks_mut(tq * hs)
            .zip(dk.par_chunks_mut(tk * hs).zip(dv.par_chunks_mut(tk * hs)))
            .enumerate()
            .for_each(|(bh, (dqh, (dkh, dvh)))| {
                let p = &self.probs[bh * tq * tk..][..tq * tk];
                let doh = &d_o[bh * tq * hs..][..tq * hs];
                let (qh, kh, vh) = (&qd[bh * tq * hs..][..tq * hs], &kd[bh * tk * hs..][..tk * hs], &vd[bh * tk * hs..][..tk * hs]);
                gemm(dvh, MatRef::new(p, tk, tq, true), MatRef::new(doh, tq, hs, false), false);
                let mut dp = vec![T::ZERO; tq * tk];
                gemm(&mut dp, MatRef::new(doh, tq, hs, false), MatRef::new(vh, hs, tk, true), false);
                let mut ds = vec![T::ZERO; tq * tk];
                for ((dsr, pr), dpr) in ds.chunks_mut(tk).zip(p.chunks(tk)).zip(dp.chunks(tk)) {
                    softmax_row_backward(dsr, pr, dpr);
                    dsr.iter_mut().for_each(|x| *x *= self.scale);
                }
                gemm(dqh, MatRef::new(&ds, tq, tk, false), MatRef::new(kh, tk, hs, false), false);
                gemm(dkh, MatRef::new(&ds, tk, tq, true), MatRef::new(qh, tq, hs, false), false);
            });
        sink.add_buf(&inputs[0], &T::wrap(dq))?;
        sink.add_buf(&inputs[1], &T::wrap(dk))?;
        sink.add_buf(&inputs[2], &T::wrap(dv))
    }
}

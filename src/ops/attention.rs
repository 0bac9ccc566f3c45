//! Fused scaled-dot-product self-attention with a key padding mask: one op, one node.

use rayon::prelude::*;

use super::dropout::apply_mask;
use super::gemm::{gemm, MatRef};
use super::same_dtype;
use super::softmax::{softmax_row_backward, softmax_row_in_place};
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, value_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `dropout(softmax(q·kᵀ·scale + mask), dropout_p) · v` per batch and head.
///
/// `q (B, NH, Tq, HS)`, `k, v (B, NH, Tk, HS)`, `key_mask (B, Tk)` of I64 with 1 = attend and
/// 0 = padding (the HF `attention_mask`); output `(B, NH, Tq, HS)`. PyTorch:
/// `F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :].bool(), scale=scale,
/// dropout_p=dropout_p)` — HF BERT's `attention_probs_dropout_prob`.
///
/// Dropout of the probabilities acts only on a training tape (like `ops::dropout`) and uses the same
/// counter-based mask: probability `(b·NH + h, i, j)` of a call with seed `s` is kept iff
/// `uniform(s, ((b·NH + h)·Tq + i)·Tk + j) ≥ p`, so the backward and the CUDA kernels redraw it
/// instead of storing it.
///
/// A query whose keys are all padding gets a zero output and passes no gradient (PyTorch gives
/// NaN there; HF's additive mask gives a uniform average over padding). The CPU kernel saves the
/// probabilities `(B, NH, Tq, Tk)` for the backward; the GPU kernel recomputes them.
pub fn attention(tape: &Tape, q: &Tensor, k: &Tensor, v: &Tensor, key_mask: Option<&Tensor>, scale: f64, dropout_p: f64) -> Result<Tensor> {
    const OP: &str = "attention";
    if !(0.0..1.0).contains(&dropout_p) {
        return value_err(OP, format!("dropout_p = {dropout_p} must be in [0, 1)"));
    }
    let (sq, sk, sv) = (q.shape(), k.shape(), v.shape());
    if sq.len() != 4 || sk.len() != 4 || sk != sv || sq[0] != sk[0] || sq[1] != sk[1] || sq[3] != sk[3] {
        return shape_err(OP, format!("need q (B, NH, Tq, HS) and k, v (B, NH, Tk, HS); got q {sq:?}, k {sk:?}, v {sv:?}"));
    }
    let (b, nh, tq, hs, tk) = (sq[0], sq[1], sq[2], sq[3], sk[2]);
    let drop = (tape.is_training() && dropout_p > 0.0).then(|| ProbDropout::new(tape.next_dropout_seed(), dropout_p));
    #[cfg(feature = "cuda")]
    if q.is_cuda() || k.is_cuda() || v.is_cuda() {
        return cuda::attention(tape, q, k, v, key_mask, scale, drop, [b, nh, tq, tk, hs]);
    }
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
            match &drop {
                None => gemm(o, MatRef::new(p, tq, tk, false), MatRef::new(vh, tk, hs, false), false),
                Some(d) => {
                    let pd = d.apply(p, bh * tq * tk);
                    gemm(o, MatRef::new(&pd, tq, tk, false), MatRef::new(vh, tk, hs, false), false)
                }
            }
        });
        let dims = AttnDims { tq, tk, hs };
        Ok(tape.record(OP, &[q, k, v], T::wrap(out), sq.to_vec(), |_| AttentionBwd { dims, scale: s, probs, drop }))
    })
}

/// Dropout of the attention probabilities: the seed of the call and p.
#[derive(Clone, Copy)]
pub(crate) struct ProbDropout {
    seed: u64,
    p: f64,
}

impl ProbDropout {
    fn new(seed: u64, p: f64) -> Self {
        ProbDropout { seed, p }
    }

    /// `x ⊙ keep / (1 − p)` for the block of probabilities starting at flat index `base`.
    fn apply<T: Float>(&self, x: &[T], base: usize) -> Vec<T> {
        let mut v = x.to_vec();
        apply_mask(&mut v, self.seed, self.p, base as u64);
        v
    }
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
    drop: Option<ProbDropout>,
}

impl<T: Float> Backward for AttentionBwd<T> {
    // O = D·V, D = P ⊙ keep / (1 − p) (D = P without dropout), P = softmax(S), S = scale·Q·Kᵀ (+mask):
    //   dV = Dᵀ·dO,  dP = (dO·Vᵀ) ⊙ keep / (1 − p),  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
    //   dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
    // Masked entries have P = 0, so they pass no gradient.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
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
                let mut dp = vec![T::ZERO; tq * tk];
                gemm(&mut dp, MatRef::new(doh, tq, hs, false), MatRef::new(vh, hs, tk, true), false);
                match &self.drop {
                    None => gemm(dvh, MatRef::new(p, tk, tq, true), MatRef::new(doh, tq, hs, false), false),
                    Some(d) => {
                        let pd = d.apply(p, bh * tq * tk);
                        gemm(dvh, MatRef::new(&pd, tk, tq, true), MatRef::new(doh, tq, hs, false), false);
                        dp = d.apply(&dp, bh * tq * tk);
                    }
                }
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

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/attention.cu): the whole op in one forward kernel, two backward kernels.
    use cudarc::driver::{CudaSlice, LaunchConfig};

    use super::ProbDropout;
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{check_cuda, dout_f32, ids_host, launch, wrap, CudaDev};
    use crate::error::{shape_err, value_err, Error, Result};
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "attention";

    /// Shared memory holds the Tk scores and one HS-wide row, each padded to whole float4s (the
    /// kernels align the second array and may read a row's tail as a vector).
    fn cfg(rows: usize, bh: usize, tk: usize, hs: usize) -> Result<LaunchConfig> {
        let smem = if tk + hs == 0 { 0 } else { (tk.div_ceil(4) + hs.div_ceil(4)) * 16 };
        if smem > 48 * 1024 {
            return Err(Error::Device(format!("{OP}: sequence too long for the v1 kernel ({smem} bytes of shared memory per block, 48 KiB max)")));
        }
        Ok(LaunchConfig { grid_dim: (rows as u32, bh as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: smem as u32 })
    }

    pub(super) fn attention(
        tape: &Tape,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        key_mask: Option<&Tensor>,
        scale: f64,
        drop: Option<ProbDropout>,
        [b, nh, tq, tk, hs]: [usize; 5],
    ) -> Result<Tensor> {
        check_cuda(OP, &[q, k, v])?;
        if let Some(m) = key_mask {
            check_cuda(OP, &[m])?;
            if m.shape() != [b, tk] {
                return shape_err(OP, format!("key_mask {:?} must be (B, Tk) = ({b}, {tk})", m.shape()));
            }
            if let Some(bad) = ids_host(m, OP)?.into_iter().find(|&x| x != 0 && x != 1) {
                return value_err(OP, format!("key_mask holds {bad}; it must be 0 (padding) or 1"));
            }
        }
        let dev = CudaDev::get()?;
        let mut out = dev.alloc::<f32>(b * nh * tq * hs)?;
        let mut probs = dev.alloc::<f32>(b * nh * tq * tk)?;
        let dims = [b as i32, nh as i32, tq as i32, tk as i32, hs as i32];
        let sf = scale as f32;
        let null: u64 = 0;
        // p = 0 turns the kernels' dropout off (every probability kept, factor 1).
        let dr = drop.map_or(DropArgs { seed: 0, p: 0.0, inv: 1.0 }, |d| DropArgs { seed: d.seed, p: d.p as f32, inv: (1.0 / (1.0 - d.p)) as f32 });
        let c = cfg(tq, b * nh, tk, hs)?;
        match key_mask.map(|m| m.cuda_i64(OP)).transpose()? {
            Some(m) => launch!(dev, "attention", "attention_fwd_v1", c; &mut out, &mut probs, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, m,
                &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
            None => launch!(dev, "attention", "attention_fwd_v1", c; &mut out, &mut probs, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, &null,
                &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
        }
        let mut inputs = vec![q, k, v];
        inputs.extend(key_mask);
        Ok(tape.record(OP, &inputs, wrap(out), vec![b, nh, tq, hs], |_| AttentionBwd { probs, dims, scale: sf, dr }))
    }

    #[derive(Clone, Copy)]
    struct DropArgs {
        seed: u64,
        p: f32,
        inv: f32,
    }

    struct AttentionBwd {
        probs: CudaSlice<f32>,
        dims: [i32; 5],
        scale: f32,
        dr: DropArgs,
    }

    impl Backward for AttentionBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let dy = dout_f32(dout, OP)?;
            let (qd, kd, vd) = (q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?);
            let d = &self.dims;
            let (b, nh, tq, tk, hs) = (d[0] as usize, d[1] as usize, d[2] as usize, d[3] as usize, d[4] as usize);
            let mut ds = dev.alloc::<f32>(b * nh * tq * tk)?;
            // dQ needs dS, which the same kernel writes; it runs even when q is untracked.
            let mut dq = dev.zeros::<f32>(b * nh * tq * hs)?;
            launch!(dev, "attention", "attention_bwd_q_v1", cfg(tq, b * nh, tk, hs)?;
                &mut dq, &mut ds, dy, &self.probs, kd, vd, &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?;
            sink.add_cuda_owned(q, dq)?;
            if sink.wants(k) || sink.wants(v) {
                let mut dk = dev.zeros::<f32>(b * nh * tk * hs)?;
                let mut dv = dev.zeros::<f32>(b * nh * tk * hs)?;
                launch!(dev, "attention", "attention_bwd_kv_v1", cfg(tk, b * nh, 0, 0)?;
                    &mut dk, &mut dv, &ds, &self.probs, qd, dy, &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?;
                sink.add_cuda_owned(k, dk)?;
                sink.add_cuda_owned(v, dv)?;
            }
            Ok(())
        }
    }
}

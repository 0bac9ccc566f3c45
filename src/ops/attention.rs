//! Fused scaled-dot-product self-attention with a key padding mask: one op, one node.

use rayon::prelude::*;

use super::dropout::apply_mask_seq;
#[cfg(target_arch = "x86_64")]
use super::gemm::{avx512_available, simd_available};
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
    if [b, nh, tq, hs, tk].contains(&0) {
        return shape_err(OP, format!("every dimension must be non-zero; got q {sq:?}, k {sk:?}"));
    }
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
        let dims = AttnDims { tq, tk, hs };
        let s = T::from_f64(scale);
        let mut out = vec![T::ZERO; b * nh * tq * hs];
        // The probabilities are kept for the backward only when there will be one; otherwise
        // each head works in a scratch block (no (B, NH, Tq, Tk) buffer to zero and fault in).
        let save = tape.tracks(&[q, k, v]);
        let mut probs = vec![T::ZERO; if save { b * nh * tq * tk } else { 0 }];
        let run = |bh: usize, o: &mut [T], p: &mut [T]| {
            let head = HeadFwd {
                dims,
                q: &qd[bh * tq * hs..][..tq * hs],
                k: &kd[bh * tk * hs..][..tk * hs],
                v: &vd[bh * tk * hs..][..tk * hs],
                keep: mask.as_deref().map(|m| &m[(bh / nh) * tk..][..tk]),
                scale: s,
                drop: drop.map(|d| (d, (bh * tq * tk) as u64)),
            };
            head_fwd(&head, o, p)
        };
        if save {
            out.par_chunks_mut(tq * hs).zip(probs.par_chunks_mut(tq * tk)).enumerate().for_each(|(bh, (o, p))| run(bh, o, p));
        } else {
            out.par_chunks_mut(tq * hs).enumerate().for_each(|(bh, o)| run(bh, o, &mut vec![T::ZERO; tq * tk]));
        }
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

    /// `out = x ⊙ keep / (1 − p)` for the probabilities starting at flat index `base`.
    fn apply_into<T: Float>(&self, out: &mut [T], x: &[T], base: u64) {
        out.copy_from_slice(x);
        apply_mask_seq(out, self.seed, self.p, base);
    }
}

#[derive(Clone, Copy)]
struct AttnDims {
    tq: usize,
    tk: usize,
    hs: usize,
}

// The CPU kernels work on one (batch, head) at a time, row by row, on vector–matrix products in
// axpy form (`vec_mat`): with Kᵀ and Vᵀ transposed once per head, every inner loop runs along a
// contiguous row with no reduction, so it vectorises without reassociating any sum, and the
// per-head operands (a few KiB to tens of KiB) stay in L1/L2. v1 ran the general GEMM per head;
// its packing dominated at K = HS = 32: 37–42 GFLOP/s forward at MiniLM's (32, 12, 128, 32), this
// v2 62–76 (`cargo bench --bench ops_cpu`, 2-core EPYC, 2026-11-23; backward 1.3–1.4× faster).
//
// Each kernel is compiled three times — as written; inside an AVX2+FMA-enabled function for CPUs
// that have them (checked at run time, inside the rayon task: closures do not inherit
// `#[target_feature]`), where f32 `vec_mat` runs on explicit 256-bit FMA intrinsics; and inside
// an AVX-512 function, where rows go four at a time through `vec_mat4` (each loaded row of K, V,
// Q or dO feeds four rows' FMAs instead of one: the one-row form was bound by loads, two per
// FMA; at MiniLM's (32, 12, 128, 32) with a padding mask: forward 9.9 → 8.4 ms saving P, 8.3 →
// 4.7 ms on an inference tape, backward 17.4 → 12.9 ms; `cargo bench --bench ops_cpu`, 2-core
// EPYC, 2026-11-24). All builds run the same fused multiply-adds in the same order per output
// element, so their results are bit-identical (as the GEMM's are).

/// The inputs of one (batch, head) of the forward.
struct HeadFwd<'a, T> {
    dims: AttnDims,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    /// The key mask row of this batch element (1 = attend).
    keep: Option<&'a [i64]>,
    scale: T,
    /// Probability dropout and the flat index of this head's first probability.
    drop: Option<(ProbDropout, u64)>,
}

fn head_fwd<T: Float>(h: &HeadFwd<T>, o: &mut [T], p: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_available() && simd_available() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe { head_fwd_avx512(h, o, p) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { head_fwd_avx2(h, o, p) };
    }
    head_fwd_impl::<T, false, false>(h, o, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_fwd_avx2<T: Float>(h: &HeadFwd<T>, o: &mut [T], p: &mut [T]) {
    head_fwd_impl::<T, true, false>(h, o, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_fwd_avx512<T: Float>(h: &HeadFwd<T>, o: &mut [T], p: &mut [T]) {
    head_fwd_impl::<T, true, true>(h, o, p)
}

/// Per query row i: s = q_i·Kᵀ·scale (masked keys → −∞), p_i = softmax(s), o_i = drop(p_i)·V.
/// `Z` (the AVX-512 build) takes the rows four at a time through `vec_mat4`.
#[inline(always)]
fn head_fwd_impl<T: Float, const WIDE: bool, const Z: bool>(h: &HeadFwd<T>, o: &mut [T], p: &mut [T]) {
    let AttnDims { tq, tk, hs } = h.dims;
    let kt = transpose(h.k, tk, hs); // (HS, Tk)
    let group = if Z { 4 } else { 1 };
    let mut dropped = vec![T::ZERO; if h.drop.is_some() { group * tk } else { 0 }];
    let mut i = 0;
    while i < tq {
        let g = if i + group <= tq { group } else { 1 };
        let rows = &mut p[i * tk..][..g * tk];
        let qs = &h.q[i * hs..][..g * hs];
        vec_mat_rows::<T, WIDE, Z>(rows, tk, qs, hs, &kt, tk);
        for row in rows.chunks_mut(tk) {
            match h.keep {
                None => row.iter_mut().for_each(|x| *x *= h.scale),
                Some(keep) => {
                    for (x, &m) in row.iter_mut().zip(keep) {
                        *x = if m != 0 { *x * h.scale } else { T::neg_infinity() };
                    }
                }
            }
            softmax_row_in_place(row);
        }
        let orows = &mut o[i * hs..][..g * hs];
        match h.drop {
            None => vec_mat_rows::<T, WIDE, Z>(orows, hs, rows, tk, h.v, hs),
            Some((d, base)) => {
                let dropped = &mut dropped[..g * tk];
                for (r, (dst, row)) in dropped.chunks_mut(tk).zip(rows.chunks(tk)).enumerate() {
                    d.apply_into(dst, row, base + ((i + r) * tk) as u64);
                }
                vec_mat_rows::<T, WIDE, Z>(orows, hs, dropped, tk, h.v, hs)
            }
        }
        i += g;
    }
}

/// `vec_mat` for each of `outs.len() / n` rows: `outs[ρ] += coefs[ρ] · mat` (rows of `n` outputs
/// and `m` coefficients). `Z` (the AVX-512 build) runs four rows per pass over `mat`; otherwise,
/// and for fewer rows, one at a time. The same FMAs per output either way.
#[inline(always)]
fn vec_mat_rows<T: Float, const WIDE: bool, const Z: bool>(outs: &mut [T], n: usize, coefs: &[T], m: usize, mat: &[T], stride: usize) {
    let rows = outs.len() / n.max(1);
    #[cfg(target_arch = "x86_64")]
    if Z && rows == 4 && n > 0 && m > 0 {
        if let (Some(o), Some(c), Some(mt)) = (T::as_f32_mut(outs), T::as_f32(coefs), T::as_f32(mat)) {
            assert!(c.len() >= 4 * m && (m - 1) * stride + n <= mt.len(), "vec_mat_rows: operands too short");
            // SAFETY: Z is only set inside the AVX-512-enabled build; bounds asserted above.
            unsafe { avx512::vec_mat4_f32(o, n, c, m, mt, stride) };
            return;
        }
    }
    for (out, coef) in outs.chunks_mut(n.max(1)).zip(coefs.chunks(m.max(1))).take(rows) {
        vec_mat::<T, WIDE>(out, &coef[..m], mat, stride);
    }
}

/// `out[c] += Σ_r coef[r] · mat[r·stride + c]` for `c < out.len()`: a vector–matrix product in
/// axpy form. 32 columns at a time in two register-resident accumulators (even and odd r, so
/// 8 independent f32 vector FMA chains), added at the end; the order is fixed, so results are
/// too. `WIDE` (the AVX2 build) sends f32 to the intrinsic twin, which does the same FMAs.
#[inline(always)]
fn vec_mat<T: Float, const WIDE: bool>(out: &mut [T], coef: &[T], mat: &[T], stride: usize) {
    let (n, rows) = (out.len(), coef.len());
    assert!(rows == 0 || (rows - 1) * stride + n <= mat.len(), "vec_mat: matrix too short");
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        if let (Some(o), Some(c), Some(m)) = (T::as_f32_mut(out), T::as_f32(coef), T::as_f32(mat)) {
            // SAFETY: WIDE is only set inside the AVX2+FMA-enabled builds; bounds asserted above.
            unsafe { avx2::vec_mat_f32(o, c, m, stride) };
            return;
        }
    }
    let mut c0 = 0;
    while c0 + W <= n {
        let (mut a0, mut a1) = ([T::ZERO; W], [T::ZERO; W]);
        let mut r = 0;
        while r + 1 < rows {
            let (x0, x1) = (coef[r], coef[r + 1]);
            let (m0, m1) = (&mat[r * stride + c0..][..W], &mat[(r + 1) * stride + c0..][..W]);
            for l in 0..W {
                a0[l] = x0.mul_add(m0[l], a0[l]);
                a1[l] = x1.mul_add(m1[l], a1[l]);
            }
            r += 2;
        }
        if r < rows {
            let (x0, m0) = (coef[r], &mat[r * stride + c0..][..W]);
            for l in 0..W {
                a0[l] = x0.mul_add(m0[l], a0[l]);
            }
        }
        for (l, y) in out[c0..c0 + W].iter_mut().enumerate() {
            *y += a0[l] + a1[l];
        }
        c0 += W;
    }
    vec_mat_tail(&mut out[c0..], coef, &mat[c0.min(mat.len())..], stride);
}

/// Column block width of `vec_mat`.
const W: usize = 32;

/// `vec_mat` on fewer than W columns: one accumulator, r in order.
#[inline(always)]
fn vec_mat_tail<T: Float>(out: &mut [T], coef: &[T], mat: &[T], stride: usize) {
    let w = out.len();
    if w == 0 {
        return;
    }
    let mut acc = [T::ZERO; W];
    for (r, &x) in coef.iter().enumerate() {
        for (a, &m) in acc[..w].iter_mut().zip(&mat[r * stride..][..w]) {
            *a = x.mul_add(m, *a);
        }
    }
    for (y, a) in out.iter_mut().zip(acc) {
        *y += a;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{vec_mat_tail, W};

    /// Four rows of `vec_mat` in one pass over `mat`: `outs[ρ·n..][..n] += coefs[ρ·m..][..m] ·
    /// mat` for ρ < 4. Per row and column, the FMAs of `vec_mat` in its order (even r into one
    /// accumulator, odd r into the other, added at the end), 16 lanes at a time: 16 zmm
    /// accumulators, and each loaded row of `mat` feeds four rows.
    ///
    /// # Safety
    /// AVX-512F must be present; `outs` holds 4·n floats, `coefs` 4·m, and `mat`
    /// `(m − 1)·stride + n` (m ≥ 1).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn vec_mat4_f32(outs: &mut [f32], n: usize, coefs: &[f32], m: usize, mat: &[f32], stride: usize) {
        let mut c0 = 0;
        // SAFETY: every load is at r·stride + c0 + l < (m − 1)·stride + n ≤ mat.len() (r < m,
        // c0 + l < n), every coefficient read at ρ·m + r < 4·m, every store at ρ·n + c0 + l < 4·n.
        unsafe {
            while c0 + W <= n {
                let z = _mm512_setzero_ps();
                let (mut a0, mut a1) = ([[z; 2]; 4], [[z; 2]; 4]);
                let cp = coefs.as_ptr();
                let mut r = 0;
                while r + 1 < m {
                    let m0 = mat.as_ptr().add(r * stride + c0);
                    let m1 = m0.add(stride);
                    let (v0, v1) = ([_mm512_loadu_ps(m0), _mm512_loadu_ps(m0.add(16))], [_mm512_loadu_ps(m1), _mm512_loadu_ps(m1.add(16))]);
                    for rho in 0..4 {
                        let (x0, x1) = (_mm512_set1_ps(*cp.add(rho * m + r)), _mm512_set1_ps(*cp.add(rho * m + r + 1)));
                        for l in 0..2 {
                            a0[rho][l] = _mm512_fmadd_ps(x0, v0[l], a0[rho][l]);
                            a1[rho][l] = _mm512_fmadd_ps(x1, v1[l], a1[rho][l]);
                        }
                    }
                    r += 2;
                }
                if r < m {
                    let m0 = mat.as_ptr().add(r * stride + c0);
                    let v0 = [_mm512_loadu_ps(m0), _mm512_loadu_ps(m0.add(16))];
                    for (rho, a) in a0.iter_mut().enumerate() {
                        let x0 = _mm512_set1_ps(*cp.add(rho * m + r));
                        for l in 0..2 {
                            a[l] = _mm512_fmadd_ps(x0, v0[l], a[l]);
                        }
                    }
                }
                for rho in 0..4 {
                    for l in 0..2 {
                        let y = outs.as_mut_ptr().add(rho * n + c0 + 16 * l);
                        _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), _mm512_add_ps(a0[rho][l], a1[rho][l])));
                    }
                }
                c0 += W;
            }
        }
        for rho in 0..4 {
            vec_mat_tail(&mut outs[rho * n + c0..][..n - c0], &coefs[rho * m..][..m], &mat[c0.min(mat.len())..], stride);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{vec_mat_tail, W};

    /// `vec_mat` for f32 with the accumulators in ymm registers: the same FMAs, in the same order.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `mat` must hold `(coef.len() − 1)·stride + out.len()` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vec_mat_f32(out: &mut [f32], coef: &[f32], mat: &[f32], stride: usize) {
        let (n, rows) = (out.len(), coef.len());
        let mut c0 = 0;
        // SAFETY: every load is at r·stride + c0 + l < (rows − 1)·stride + n ≤ mat.len() (r < rows,
        // c0 + l < n), every store at c0 + l < n = out.len().
        unsafe {
            while c0 + W <= n {
                let z = _mm256_setzero_ps();
                let (mut a0, mut a1) = ([z; 4], [z; 4]);
                let mut r = 0;
                while r + 1 < rows {
                    let (x0, x1) = (_mm256_set1_ps(coef[r]), _mm256_set1_ps(coef[r + 1]));
                    let m0 = mat.as_ptr().add(r * stride + c0);
                    let m1 = m0.add(stride);
                    for l in 0..4 {
                        a0[l] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(m0.add(8 * l)), a0[l]);
                        a1[l] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(m1.add(8 * l)), a1[l]);
                    }
                    r += 2;
                }
                if r < rows {
                    let (x0, m0) = (_mm256_set1_ps(coef[r]), mat.as_ptr().add(r * stride + c0));
                    for (l, a) in a0.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(m0.add(8 * l)), *a);
                    }
                }
                for l in 0..4 {
                    let y = out.as_mut_ptr().add(c0 + 8 * l);
                    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), _mm256_add_ps(a0[l], a1[l])));
                }
                c0 += W;
            }
        }
        vec_mat_tail(&mut out[c0..], coef, &mat[c0.min(mat.len())..], stride);
    }
}

/// `(rows, cols)` row-major → `(cols, rows)`, in 8×8 tiles so both sides stay in L1.
#[inline(always)]
fn transpose<T: Float>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    const B: usize = 8;
    let mut t = vec![T::ZERO; rows * cols];
    for r0 in (0..rows).step_by(B) {
        let rn = B.min(rows - r0);
        let src = &x[r0 * cols..][..rn * cols];
        for c0 in (0..cols).step_by(B) {
            for c in c0..cols.min(c0 + B) {
                for (r, d) in t[c * rows + r0..][..rn].iter_mut().enumerate() {
                    *d = src[r * cols + c];
                }
            }
        }
    }
    t
}

struct AttentionBwd<T> {
    dims: AttnDims,
    scale: T,
    probs: Vec<T>,
    drop: Option<ProbDropout>,
}

/// The saved and upstream values of one (batch, head) of the backward.
struct HeadBwd<'a, T> {
    dims: AttnDims,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    p: &'a [T],
    d_o: &'a [T],
    scale: T,
    drop: Option<(ProbDropout, u64)>,
}

/// Gradient outputs of one head (each zero on entry, accumulated into).
struct HeadGrads<'a, T> {
    dq: &'a mut [T],
    dk: &'a mut [T],
    dv: &'a mut [T],
}

impl<T: Float> Backward for AttentionBwd<T> {
    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(&self.probs[..])
    }

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
            .for_each(|(bh, (dq, (dk, dv)))| {
                let head = HeadBwd {
                    dims: self.dims,
                    q: &qd[bh * tq * hs..][..tq * hs],
                    k: &kd[bh * tk * hs..][..tk * hs],
                    v: &vd[bh * tk * hs..][..tk * hs],
                    p: &self.probs[bh * tq * tk..][..tq * tk],
                    d_o: &d_o[bh * tq * hs..][..tq * hs],
                    scale: self.scale,
                    drop: self.drop.map(|d| (d, (bh * tq * tk) as u64)),
                };
                head_bwd(&head, &mut HeadGrads { dq, dk, dv })
            });
        sink.add_owned(&inputs[0], T::wrap(dq))?;
        sink.add_owned(&inputs[1], T::wrap(dk))?;
        sink.add_owned(&inputs[2], T::wrap(dv))
    }
}

fn head_bwd<T: Float>(h: &HeadBwd<T>, g: &mut HeadGrads<T>) {
    #[cfg(target_arch = "x86_64")]
    if avx512_available() && simd_available() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe { head_bwd_avx512(h, g) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { head_bwd_avx2(h, g) };
    }
    head_bwd_impl::<T, false, false>(h, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_bwd_avx2<T: Float>(h: &HeadBwd<T>, g: &mut HeadGrads<T>) {
    head_bwd_impl::<T, true, false>(h, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_bwd_avx512<T: Float>(h: &HeadBwd<T>, g: &mut HeadGrads<T>) {
    head_bwd_impl::<T, true, true>(h, g)
}

/// Rows of Q first (dP, dS and dQ per query row), then rows of K and V from dSᵀ and Dᵀ.
#[inline(always)]
fn head_bwd_impl<T: Float, const WIDE: bool, const Z: bool>(h: &HeadBwd<T>, g: &mut HeadGrads<T>) {
    let AttnDims { tq, tk, hs } = h.dims;
    let vt = transpose(h.v, tk, hs); // (HS, Tk)
    let mut ds = vec![T::ZERO; tq * tk];
    let mut d = if h.drop.is_some() { vec![T::ZERO; tq * tk] } else { Vec::new() };
    let mut dp = vec![T::ZERO; tk];
    let mut keep = vec![T::ZERO; if h.drop.is_some() { tk } else { 0 }];
    for i in 0..tq {
        let prow = &h.p[i * tk..][..tk];
        dp.fill(T::ZERO);
        vec_mat::<T, WIDE>(&mut dp, &h.d_o[i * hs..][..hs], &vt, tk);
        if let Some((dr, base)) = h.drop {
            // One draw per probability for both uses: dP ⊙ keep/(1 − p) and D = P ⊙ keep/(1 − p).
            keep.fill(T::ONE);
            apply_mask_seq(&mut keep, dr.seed, dr.p, base + (i * tk) as u64);
            dp.iter_mut().zip(&keep).for_each(|(x, &m)| *x *= m);
            d[i * tk..][..tk].iter_mut().zip(prow.iter().zip(&keep)).for_each(|(y, (&x, &m))| *y = x * m);
        }
        let dsrow = &mut ds[i * tk..][..tk];
        softmax_row_backward(dsrow, prow, &dp);
        dsrow.iter_mut().for_each(|x| *x *= h.scale);
    }
    let group = if Z { 4 } else { 1 };
    // dQ = dS·K, dK = dSᵀ·Q, dV = Dᵀ·dO, rows `group` at a time.
    let by_rows = |out: &mut [T], coefs: &[T], m: usize, mat: &[T], rows: usize| {
        let mut i = 0;
        while i < rows {
            let g = if i + group <= rows { group } else { 1 };
            vec_mat_rows::<T, WIDE, Z>(&mut out[i * hs..][..g * hs], hs, &coefs[i * m..][..g * m], m, mat, hs);
            i += g;
        }
    };
    by_rows(g.dq, &ds, tk, h.k, tq);
    let dst = transpose(&ds, tq, tk); // (Tk, Tq)
    let dt = transpose(if h.drop.is_some() { &d } else { h.p }, tq, tk);
    by_rows(g.dk, &dst, tq, h.q, tk);
    by_rows(g.dv, &dt, tq, h.d_o, tk);
}

#[cfg(feature = "cuda")]
pub use cuda::{with_attention_variant, AttentionVariant};

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/attention.cu): v1, the whole op in one forward kernel and two backward
    //! kernels, saving P; v2 (flash-style), saving the row log-sum-exp.
    use cudarc::driver::{CudaSlice, LaunchConfig};

    use super::ProbDropout;
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{check_cuda, dout_f32, ids_host, launch, wrap, CudaDev};
    use crate::error::{shape_err, value_err, Error, Result};
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "attention";

    /// The attention kernels of kernels/attention.cu.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AttentionVariant {
        /// Scores in shared memory per query row; saves P (B, NH, Tq, Tk): the first kernel, and
        /// the one for heads wider than 64.
        V1,
        /// Flash-style (online softmax, saves the row log-sum-exp), HS ≤ 64: production (run on an H100).
        V2,
    }

    thread_local! {
        static FORCED: std::cell::Cell<Option<AttentionVariant>> = const { std::cell::Cell::new(None) };
    }

    /// Run `f` with every attention launched from this thread using `v` (tests, benchmarks).
    pub fn with_attention_variant<R>(v: AttentionVariant, f: impl FnOnce() -> R) -> R {
        let prev = FORCED.with(|c| c.replace(Some(v)));
        let r = f();
        FORCED.with(|c| c.set(prev));
        r
    }

    /// The forced variant, else `ENGRAM_ATTENTION=v1`: v1, else v2 (the production kernel since
    /// its H100 run, 2026-11-24); v2 only for heads of ≤ 64 (wider heads run v1).
    fn variant(hs: usize) -> AttentionVariant {
        static ENV: std::sync::OnceLock<AttentionVariant> = std::sync::OnceLock::new();
        let want = FORCED.with(|c| c.get()).unwrap_or_else(|| {
            *ENV.get_or_init(|| match std::env::var("ENGRAM_ATTENTION").as_deref() {
                Ok("v1") => AttentionVariant::V1,
                Ok("v2") | Err(_) => AttentionVariant::V2,
                Ok(other) => {
                    eprintln!("warning: ENGRAM_ATTENTION={other:?} is not one of v1, v2; using v2");
                    AttentionVariant::V2
                }
            })
        });
        if hs > 64 {
            AttentionVariant::V1
        } else {
            want
        }
    }

    /// v2 tiles: 32 query rows (or keys) per block, 128 threads; shared memory for HS.
    const R2: usize = 32;
    fn cfg2(rows: usize, bh: usize, floats: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.div_ceil(R2) as u32, bh as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: (floats * 4) as u32 }
    }
    /// Shared floats of the v2 kernels (the layouts in kernels/attention.cu: rows of HS rounded
    /// up to 4, plus 4).
    fn smem2(hs: usize) -> (usize, usize, usize) {
        let (hp, r, t) = (hs.div_ceil(4) * 4 + 4, R2, R2);
        (r * hp + 2 * t * hp + r * (t + 4) + t, 2 * r * hp + 2 * t * hp + r * (t + 4) + t, 2 * r * hp + 2 * t * hp + 2 * r * (t + 4) + 2 * t)
    }

    /// Shared memory holds the Tk scores and one HS-wide row, each padded to whole float4s (the
    /// kernels align the second array and may read a row's tail as a vector).
    fn cfg(rows: usize, bh: usize, tk: usize, hs: usize) -> Result<LaunchConfig> {
        let smem = if tk + hs == 0 { 0 } else { (tk.div_ceil(4) + hs.div_ceil(4)) * 16 };
        if smem > 48 * 1024 {
            return Err(Error::Device(format!("{OP}: sequence too long for the v1 kernel ({smem} bytes of shared memory per block, 48 KiB max)")));
        }
        Ok(LaunchConfig { grid_dim: (rows as u32, bh as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: smem as u32 })
    }

    #[allow(clippy::too_many_arguments)]
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
        let dims = [b as i32, nh as i32, tq as i32, tk as i32, hs as i32];
        let sf = scale as f32;
        let null: u64 = 0;
        // p = 0 turns the kernels' dropout off (every probability kept, factor 1).
        let dr = drop.map_or(DropArgs { seed: 0, p: 0.0, inv: 1.0 }, |d| DropArgs { seed: d.seed, p: d.p as f32, inv: (1.0 / (1.0 - d.p)) as f32 });
        if variant(hs) == AttentionVariant::V2 {
            let mut lse = dev.alloc::<f32>(b * nh * tq)?;
            let c = cfg2(tq, b * nh, smem2(hs).0);
            match key_mask.map(|m| m.cuda_i64(OP)).transpose()? {
                Some(m) => launch!(dev, "attention", "attention_fwd_v2", c; &mut out, &mut lse, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, m,
                    &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
                None => launch!(dev, "attention", "attention_fwd_v2", c; &mut out, &mut lse, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, &null,
                    &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
            }
            let mut inputs = vec![q, k, v];
            inputs.extend(key_mask);
            let tracked = tape.tracks(&inputs);
            // The backward needs O for D = rowsum(dO ⊙ O): a copy, only when there is a backward.
            let saved_out = if tracked { Some(dev.stream().clone_dtod(&out).map_err(|e| dev.err("attention: copy of O", e))?) } else { None };
            return Ok(tape.record(OP, &inputs, wrap(out), vec![b, nh, tq, hs], |_| AttentionBwd {
                saved: Saved::V2 { lse, out: saved_out.expect("recorded only when tracked") },
                dims,
                scale: sf,
                dr,
            }));
        }
        let mut probs = dev.alloc::<f32>(b * nh * tq * tk)?;
        let c = cfg(tq, b * nh, tk, hs)?;
        match key_mask.map(|m| m.cuda_i64(OP)).transpose()? {
            Some(m) => launch!(dev, "attention", "attention_fwd_v1", c; &mut out, &mut probs, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, m,
                &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
            None => launch!(dev, "attention", "attention_fwd_v1", c; &mut out, &mut probs, q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?, &null,
                &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &sf, &dr.seed, &dr.p, &dr.inv)?,
        }
        let mut inputs = vec![q, k, v];
        inputs.extend(key_mask);
        Ok(tape.record(OP, &inputs, wrap(out), vec![b, nh, tq, hs], |_| AttentionBwd { saved: Saved::V1 { probs }, dims, scale: sf, dr }))
    }

    /// What the forward leaves for the backward.
    enum Saved {
        V1 { probs: CudaSlice<f32> },
        /// Row log-sum-exp (B, NH, Tq) and the output O.
        V2 { lse: CudaSlice<f32>, out: CudaSlice<f32> },
    }

    #[derive(Clone, Copy)]
    struct DropArgs {
        seed: u64,
        p: f32,
        inv: f32,
    }

    struct AttentionBwd {
        saved: Saved,
        dims: [i32; 5],
        scale: f32,
        dr: DropArgs,
    }

    impl Backward for AttentionBwd {
        fn saved_bytes(&self) -> usize {
            4 * match &self.saved {
                Saved::V1 { probs } => probs.len(),
                Saved::V2 { lse, out } => lse.len() + out.len(),
            }
        }

        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let dy = dout_f32(dout, OP)?;
            let (qd, kd, vd) = (q.cuda_f32(OP)?, k.cuda_f32(OP)?, v.cuda_f32(OP)?);
            let d = &self.dims;
            let (b, nh, tq, tk, hs) = (d[0] as usize, d[1] as usize, d[2] as usize, d[3] as usize, d[4] as usize);
            let probs = match &self.saved {
                Saved::V1 { probs } => probs,
                Saved::V2 { lse, out } => {
                    let (_, sq, skv) = smem2(hs);
                    let rows = (b * nh * tq) as i64;
                    let mut dd = dev.alloc::<f32>(b * nh * tq)?;
                    launch!(dev, "attention", "attention_bwd_d_v2", crate::device::cuda::cfg_1d(rows as usize); &mut dd, dy, out, &rows, &d[4])?;
                    let null: u64 = 0;
                    let mask = inputs.get(3).map(|m| m.cuda_i64(OP)).transpose()?;
                    let mut dq = dev.zeros::<f32>(b * nh * tq * hs)?;
                    match mask {
                        Some(m) => launch!(dev, "attention", "attention_bwd_q_v2", cfg2(tq, b * nh, sq); &mut dq, dy, lse, &dd, qd, kd, vd, m,
                            &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?,
                        None => launch!(dev, "attention", "attention_bwd_q_v2", cfg2(tq, b * nh, sq); &mut dq, dy, lse, &dd, qd, kd, vd, &null,
                            &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?,
                    }
                    sink.add_cuda_owned(q, dq)?;
                    if sink.wants(k) || sink.wants(v) {
                        let mut dk = dev.zeros::<f32>(b * nh * tk * hs)?;
                        let mut dv = dev.zeros::<f32>(b * nh * tk * hs)?;
                        match mask {
                            Some(m) => launch!(dev, "attention", "attention_bwd_kv_v2", cfg2(tk, b * nh, skv); &mut dk, &mut dv, dy, lse, &dd, qd, kd, vd, m,
                                &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?,
                            None => launch!(dev, "attention", "attention_bwd_kv_v2", cfg2(tk, b * nh, skv); &mut dk, &mut dv, dy, lse, &dd, qd, kd, vd, &null,
                                &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?,
                        }
                        sink.add_cuda_owned(k, dk)?;
                        sink.add_cuda_owned(v, dv)?;
                    }
                    return Ok(());
                }
            };
            let mut ds = dev.alloc::<f32>(b * nh * tq * tk)?;
            // dQ needs dS, which the same kernel writes; it runs even when q is untracked.
            let mut dq = dev.zeros::<f32>(b * nh * tq * hs)?;
            launch!(dev, "attention", "attention_bwd_q_v1", cfg(tq, b * nh, tk, hs)?;
                &mut dq, &mut ds, dy, probs, kd, vd, &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?;
            sink.add_cuda_owned(q, dq)?;
            if sink.wants(k) || sink.wants(v) {
                let mut dk = dev.zeros::<f32>(b * nh * tk * hs)?;
                let mut dv = dev.zeros::<f32>(b * nh * tk * hs)?;
                launch!(dev, "attention", "attention_bwd_kv_v1", cfg(tk, b * nh, 0, 0)?;
                    &mut dk, &mut dv, &ds, probs, qd, dy, &d[0], &d[1], &d[2], &d[3], &d[4], &self.scale, &self.dr.seed, &self.dr.p, &self.dr.inv)?;
                sink.add_cuda_owned(k, dk)?;
                sink.add_cuda_owned(v, dv)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        crate::util::Rng::new(seed).normal_vec(n).into_iter().map(|x| x as f32).collect()
    }

    /// The AVX2 build of the kernels and the plain build must agree bit for bit (same operations,
    /// same order), forward and backward, with padding and dropout, at block-and-tail shapes.
    #[test]
    fn wide_and_plain_builds_are_bit_identical() {
        #[cfg(target_arch = "x86_64")]
        {
            if !simd_available() {
                eprintln!("skipped: this CPU has no AVX2+FMA, so there is only one build");
                return;
            }
            let dims = AttnDims { tq: 37, tk: 70, hs: 40 };
            let (q, k, v) = (rand(37 * 40, 1), rand(70 * 40, 2), rand(70 * 40, 3));
            let keep: Vec<i64> = (0..70).map(|j| i64::from(j % 7 != 2)).collect();
            let head = HeadFwd { dims, q: &q, k: &k, v: &v, keep: Some(&keep), scale: 0.3, drop: Some((ProbDropout::new(9, 0.2), 1234)) };
            // The kernels accumulate into their outputs: both start from zero, as in the op.
            let (mut o1, mut p1) = (vec![0.0f32; 37 * 40], vec![0.0f32; 37 * 70]);
            let (mut o2, mut p2) = (o1.clone(), p1.clone());
            head_fwd_impl::<f32, false, false>(&head, &mut o1, &mut p1);
            unsafe { head_fwd_avx2(&head, &mut o2, &mut p2) };
            assert!(o1.iter().zip(&o2).all(|(a, b)| a.to_bits() == b.to_bits()), "forward outputs differ");
            assert!(p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()), "probabilities differ");
            if avx512_available() {
                let (mut o3, mut p3) = (vec![0.0f32; 37 * 40], vec![0.0f32; 37 * 70]);
                unsafe { head_fwd_avx512(&head, &mut o3, &mut p3) };
                assert!(o1.iter().zip(&o3).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX-512 forward outputs differ");
                assert!(p1.iter().zip(&p3).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX-512 probabilities differ");
            } else {
                eprintln!("AVX-512 build skipped: this CPU has no AVX-512F");
            }
            assert!(o1.iter().all(|x| x.is_finite()) && o1.iter().any(|&x| x != 0.0));
            let d_o = rand(37 * 40, 4);
            let bwd = HeadBwd { dims, q: &q, k: &k, v: &v, p: &p1, d_o: &d_o, scale: 0.3, drop: Some((ProbDropout::new(9, 0.2), 1234)) };
            let mut g1 = (vec![0.0f32; 37 * 40], vec![0.0f32; 70 * 40], vec![0.0f32; 70 * 40]);
            let mut g2 = g1.clone();
            head_bwd_impl::<f32, false, false>(&bwd, &mut HeadGrads { dq: &mut g1.0, dk: &mut g1.1, dv: &mut g1.2 });
            unsafe { head_bwd_avx2(&bwd, &mut HeadGrads { dq: &mut g2.0, dk: &mut g2.1, dv: &mut g2.2 }) };
            for (name, a, b) in [("dq", &g1.0, &g2.0), ("dk", &g1.1, &g2.1), ("dv", &g1.2, &g2.2)] {
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
                assert!(a.iter().any(|&x| x != 0.0), "{name} all zero");
            }
            if avx512_available() {
                let mut g3 = (vec![0.0f32; 37 * 40], vec![0.0f32; 70 * 40], vec![0.0f32; 70 * 40]);
                unsafe { head_bwd_avx512(&bwd, &mut HeadGrads { dq: &mut g3.0, dk: &mut g3.1, dv: &mut g3.2 }) };
                for (name, a, b) in [("dq", &g1.0, &g3.0), ("dk", &g1.1, &g3.1), ("dv", &g1.2, &g3.2)] {
                    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "AVX-512 {name} differs");
                }
            }
        }
    }
}

//! `linear_int8`: a dynamically quantized linear layer for CPU inference —
//! `torch.ao.nn.quantized.dynamic.Linear`, with a per-output-channel weight scale (PyTorch's
//! default is one scale per tensor) and a per-row activation scale (PyTorch: per tensor).
//!
//! The weight `w (OUT, IN)` is quantized once ([`Int8Weight::quantize`]): `q_w[n, k] =
//! round(w[n, k] / s_w[n])` in [-127, 127] with `s_w[n] = max_k |w[n, k]| / 127`. Each call
//! quantizes the input rows the same way (`s_x[r] = max_k |x[r, k]| / 127`), multiplies in 8-bit
//! integers with exact 32-bit sums and scales back:
//!
//! `y[r, n] = s_x[r] · s_w[n] · Σ_k q_x[r, k] · q_w[n, k] + bias[n]`
//!
//! Four kernels compute the integer sums, picked once at run time (`ENGRAM_INT8_KERNEL=vnni|
//! avxvnni|avx2|portable` forces one, for comparisons):
//! - `vnni`: x86's `vpdpbusd` (AVX-512 VNNI: 64 u8×i8 products summed in fours into 16 i32 lanes
//!   per instruction). It wants the left operand unsigned, so the activations are stored as
//!   `q_x + 128` and the 128·Σ_k q_w[n, k] this adds is taken off at the end.
//! - `avxvnni`: the same instruction at 256 bits (AVX-VNNI: CPUs with VNNI but no AVX-512).
//! - `avx2`: `vpmaddubsw` on |q_x| and q_w·sign(q_x) (pairs of products ≤ 2·127² fit i16, so it
//!   never saturates), then `vpmaddwd` with ones into i32 — for x86 CPUs without VNNI.
//! - `portable`: plain loops (other architectures; slow, it is the reference).
//!
//! Integer sums are exact and every kernel finishes with the same f32 operations in the same order,
//! so all give bit-identical outputs (a test checks it).
//!
//! Inference only: there is no backward (a training tape that tracks the input is refused), and
//! a quantized model is not fine-tuned. Error against the f32 layer: each product term is off by
//! at most `|x|·s_w/2 + |w|·s_x/2` plus the scales' rounding; on all-MiniLM-L6-v2 the sentence
//! embeddings keep cosine ≥ 0.99 with the f32 ones (tests/bert.rs).

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Buf, DType, Tensor};

/// Rows of a register tile.
const MR: usize = 8;
/// Columns of a register tile and of a packed weight panel (two 16-lane i32 vectors).
const NR: usize = 32;
/// Rows of the output per task (a multiple of MR): the task's quantized rows stay in L2 while
/// each weight panel is streamed through them.
const RB: usize = 64;
/// Panels per task along the columns (batch-1 inference still splits across cores).
const PB: usize = 2;
/// Longest input row whose 8-bit sums cannot overflow i32 (255 · 127 · K < 2³¹).
const MAX_IN: usize = 65_536;

/// A linear weight quantized to int8 per output channel and packed for [`linear_int8`].
#[derive(Clone, Debug)]
pub struct Int8Weight {
    out: usize,
    inp: usize,
    /// IN rounded up to a multiple of 4 (one `vpdpbusd` lane sums four products).
    kp: usize,
    /// `ceil(OUT / NR)` panels; panel p, group g (inputs 4g..4g+4), column j at
    /// `p·kp·NR + g·4·NR + 4j`: the four bytes lane j of `vpdpbusd` multiplies. Padding is 0.
    packed: Vec<i8>,
    /// `s_w[n]`, per output channel.
    scale: Vec<f32>,
    /// `128 · Σ_k q_w[n, k]`: what storing the activations offset by 128 adds to each sum of
    /// the `vnni` kernel. Padded with zeros to whole panels.
    offset: Vec<i32>,
}

impl Int8Weight {
    /// Quantize an f32 CPU weight `(OUT, IN)` (HF / PyTorch layout).
    pub fn quantize(w: &Tensor) -> Result<Int8Weight> {
        const OP: &str = "linear_int8";
        if w.shape().len() != 2 || w.numel() == 0 {
            return shape_err(OP, format!("weight must be a non-empty (OUT, IN) matrix, got {:?}", w.shape()));
        }
        if w.dtype() != DType::F32 || w.is_cuda() {
            return Err(Error::DType { op: OP, dtype: w.dtype(), detail: "quantizes f32 weights on the CPU".into() });
        }
        let (out, inp) = (w.shape()[0], w.shape()[1]);
        if inp > MAX_IN {
            return shape_err(OP, format!("IN = {inp} is over {MAX_IN}: 8-bit sums could overflow 32 bits"));
        }
        let wd = w.data::<f32>(OP)?;
        if let Some(i) = wd.iter().position(|v| !v.is_finite()) {
            // A scale cannot hold it: refuse rather than quantize it to some finite code.
            return Err(Error::Value { op: OP, detail: format!("weight element [{}, {}] is {}", i / inp, i % inp, wd[i]) });
        }
        let kp = inp.div_ceil(4) * 4;
        let panels = out.div_ceil(NR);
        let mut q = vec![0i8; out * inp];
        let mut scale = vec![0f32; out];
        q.par_chunks_mut(inp).zip(scale.par_iter_mut()).zip(wd.par_chunks(inp)).for_each(|((qr, s), wr)| {
            *s = quantize_row(wr, qr);
        });
        let mut offset: Vec<i32> = q.chunks(inp).map(|r| 128 * r.iter().map(|&v| v as i32).sum::<i32>()).collect();
        offset.resize(panels * NR, 0);
        let mut packed = vec![0i8; panels * kp * NR];
        packed.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| {
            for j in 0..NR.min(out - p * NR) {
                let row = &q[(p * NR + j) * inp..][..inp];
                for (k, &v) in row.iter().enumerate() {
                    panel[(k / 4) * 4 * NR + 4 * j + k % 4] = v;
                }
            }
        });
        Ok(Int8Weight { out, inp, kp, packed, scale, offset })
    }

    /// `(OUT, IN)`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out, self.inp]
    }

    /// Bytes held (the packed weight, scales and offsets).
    pub fn bytes(&self) -> usize {
        self.packed.len() + 8 * self.out
    }

    /// The quantized weight back in f32, `s_w[n] · q_w[n, k]` (for tests and error bounds).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.inp];
        for n in 0..self.out {
            let (p, j) = (n / NR, n % NR);
            for k in 0..self.inp {
                w[n * self.inp + k] = self.scale[n] * self.packed[p * self.kp * NR + (k / 4) * 4 * NR + 4 * j + k % 4] as f32;
            }
        }
        w
    }
}

/// Symmetric int8 quantization of one row into `q`; returns the scale `max |x| / 127` (0 for an
/// all-zero row, whose codes are all 0; NaN for a row with a NaN or infinity, whose outputs are
/// then NaN, as the f32 layer's would be). Rounding is to nearest, ties to even, as x86's
/// `cvtps2dq` rounds, so the vector quantizer gives the same codes.
pub(super) fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let (amax, inv, poison) = row_scale(x);
    for (qv, &v) in q.iter_mut().zip(x) {
        *qv = round_even(v * inv).clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0 + poison
}

/// `(max |x|, 127 / max |x| or 0, 0 or NaN)`: the scale's parts; `poison` is NaN when the row is
/// not finite (then `inv` is 0 and every code 0).
fn row_scale(x: &[f32]) -> (f32, f32, f32) {
    let (mut amax, mut poison) = (0f32, 0f32);
    for &v in x {
        amax = amax.max(v.abs());
        poison += v * 0.0;
    }
    let inv = if amax > 0.0 && poison == 0.0 { 127.0 / amax } else { 0.0 };
    (amax, inv, poison)
}

/// Round to nearest, ties to even, for |v| < 2²²: adding 1.5·2²³ leaves no fraction bits.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// One input row quantized and offset for `vpdpbusd`: `u8 = q + 128`; returns the row scale.
fn quantize_row_u8(x: &[f32], qr: &mut [u8], kernel: Kernel) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Vnni {
        // SAFETY: the CPU has AVX-512F/BW (checked by `Kernel::detect`); qr holds ≥ x.len() bytes.
        return unsafe { x86::quantize_row_u8(x, qr) };
    }
    let _ = kernel;
    let (amax, inv, poison) = row_scale(x);
    for (d, &v) in qr.iter_mut().zip(x) {
        *d = (round_even(v * inv).clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
    amax / 127.0 + poison
}

/// `x (…, IN) @ dequant(w)ᵀ + bias` with 8-bit products (see the module docs). `x` f32 on the
/// CPU; output `(…, OUT)`. Records nothing; refuses an input a training tape tracks.
pub fn linear_int8(tape: &Tape, x: &Tensor, w: &Int8Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear_int8";
    let sx = x.shape();
    if sx.is_empty() || sx[sx.len() - 1] != w.inp {
        return shape_err(OP, format!("x {sx:?} does not fit the quantized weight ({}, {})", w.out, w.inp));
    }
    if tape.tracks(&[x]) {
        return Err(Error::Autograd(format!("{OP} has no backward: quantized layers are for inference, not training")));
    }
    if x.dtype() != DType::F32 || x.is_cuda() {
        return Err(Error::DType { op: OP, dtype: x.dtype(), detail: "runs on f32 CPU tensors".into() });
    }
    let bias = match bias {
        Some(b) if b.shape() != [w.out] => return shape_err(OP, format!("bias {:?} does not fit OUT = {}", b.shape(), w.out)),
        Some(b) => Some(b.data::<f32>(OP)?),
        None => None,
    };
    let rows = x.numel() / w.inp;
    let mut out_shape = sx.to_vec();
    *out_shape.last_mut().expect("rank ≥ 1") = w.out;
    let y = forward(x.data::<f32>(OP)?, rows, w, bias, Kernel::detect());
    Ok(tape.record(OP, &[x], Buf::F32(y), out_shape, |_| NoBackward(OP)))
}

/// The integer kernel (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only x86 builds pick the SIMD kernels
enum Kernel {
    Vnni,
    AvxVnni,
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest this CPU runs, once per process; `ENGRAM_INT8_KERNEL` may pick a slower one.
    fn detect() -> Kernel {
        static K: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| {
            let all = Kernel::available();
            let want = std::env::var("ENGRAM_INT8_KERNEL").ok();
            all.iter().copied().find(|k| want.as_deref().is_none_or(|w| format!("{k:?}").eq_ignore_ascii_case(w))).unwrap_or(all[0])
        })
    }

    /// The kernels this CPU can run, fastest first (`Portable` always).
    fn available() -> Vec<Kernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                out.push(Kernel::Vnni);
            }
            if has!("avx2") && has!("avxvnni") {
                out.push(Kernel::AvxVnni);
            }
            if has!("avx2") {
                out.push(Kernel::Avx2);
            }
        }
        out.push(Kernel::Portable);
        out
    }
}

/// The node of a quantized op (its name): never recorded — the ops refuse tracked inputs — and
/// an error if it ever were asked for a gradient.
pub(super) struct NoBackward(pub(super) &'static str);

impl Backward for NoBackward {
    fn backward(&self, _: &[Tensor], _: &Buf, _: &mut GradSink) -> Result<()> {
        Err(Error::Autograd(format!("{} has no backward", self.0)))
    }
}

/// The output, shared by tasks that write disjoint (row block × panel block) rectangles.
struct Out(*mut f32);
// SAFETY: every task writes only its own rectangle of `y` (distinct row ranges or distinct
// column ranges), and `y` outlives the parallel loop that uses this pointer.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `rows` rows of `x (rows, IN)` through the layer: `(rows, OUT)`.
fn forward(x: &[f32], rows: usize, w: &Int8Weight, bias: Option<&[f32]>, kernel: Kernel) -> Vec<f32> {
    let (n, kp) = (w.out, w.kp);
    // Every element is written below (the tasks tile all rows × all panels), so the output is
    // not zeroed first: at batch 32 × 128 tokens that memset was 8 % of a MiniLM forward.
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    if rows == 0 || n == 0 {
        return y;
    }
    // Quantized rows, offset to u8; the padding bytes meet zero weights.
    let mut xq = vec![0u8; rows * kp];
    let mut xs = vec![0f32; rows];
    let quantize = |(qr, s): (&mut [u8], &mut f32), xr: &[f32]| *s = quantize_row_u8(xr, qr, kernel);
    if rows >= 16 {
        xq.par_chunks_mut(kp).zip(xs.par_iter_mut()).zip(x.par_chunks(w.inp)).for_each(|(qs, xr)| quantize(qs, xr));
    } else {
        xq.chunks_mut(kp).zip(xs.iter_mut()).zip(x.chunks(w.inp)).for_each(|(qs, xr)| quantize(qs, xr));
    }
    let panels = n.div_ceil(NR);
    let (row_blocks, panel_blocks) = (rows.div_ceil(RB), panels.div_ceil(PB));
    let out = Out(y.as_mut_ptr());
    let task = |t: usize| {
        let out = &out;
        let (rb, pb) = (t / panel_blocks, t % panel_blocks);
        for p in pb * PB..((pb + 1) * PB).min(panels) {
            let panel = &w.packed[p * kp * NR..][..kp * NR];
            let (c0, nc) = (p * NR, NR.min(n - p * NR));
            let mut r0 = rb * RB;
            while r0 < ((rb + 1) * RB).min(rows) {
                let mr = MR.min(rows - r0);
                let mut acc = [0i32; MR * NR];
                tile(&mut acc, &xq[r0 * kp..(r0 + mr) * kp], mr, kp, panel, &w.offset[c0..c0 + NR], kernel);
                for i in 0..mr {
                    // SAFETY: row r0 + i < rows, columns c0..c0 + nc ≤ n: inside y's capacity,
                    // and only this task writes this (row block, panel) rectangle.
                    let yr = unsafe { out.0.add((r0 + i) * n + c0) };
                    let args = (&acc[i * NR..][..nc], xs[r0 + i], &w.scale[c0..c0 + nc], bias.map(|b| &b[c0..c0 + nc]));
                    // SAFETY: yr has nc writable elements (above); the x86 forms need only the
                    // AVX-512F / AVX2 the kernel implies.
                    unsafe {
                        #[cfg(target_arch = "x86_64")]
                        match kernel {
                            Kernel::Vnni => x86::epilogue_avx512(yr, args.0, args.1, args.2, args.3),
                            Kernel::AvxVnni | Kernel::Avx2 => x86::epilogue_avx2(yr, args.0, args.1, args.2, args.3),
                            Kernel::Portable => epilogue(yr, args.0, args.1, args.2, args.3),
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        epilogue(yr, args.0, args.1, args.2, args.3);
                    }
                }
                r0 += mr;
            }
        }
    };
    let tasks = row_blocks * panel_blocks;
    if tasks > 1 && rows * n * kp > 1 << 16 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: all rows · n elements were written above.
    unsafe { y.set_len(rows * n) };
    y
}

/// `y = acc · (s_x · s_w) + bias` for `acc.len()` columns, element by element in f32 (no fused
/// multiply-add, so every build and kernel rounds the same way).
///
/// # Safety
/// `y` points to `acc.len()` writable f32 (possibly uninitialised).
#[inline(always)]
unsafe fn epilogue(y: *mut f32, acc: &[i32], sx: f32, sw: &[f32], bias: Option<&[f32]>) {
    let sw = &sw[..acc.len()];
    for j in 0..acc.len() {
        let v = acc[j] as f32 * (sx * sw[j]);
        let v = match bias {
            Some(b) => v + b[j],
            None => v,
        };
        // SAFETY: j < acc.len() (the caller's contract).
        unsafe { y.add(j).write(v) };
    }
}

/// `acc (MR, NR) = Σ_k q_x · q_w` for `mr` rows of `xq` (kp bytes each, `q_x + 128`) and one
/// panel, exact in i32; `offset` is the panel's (NR values).
fn tile(acc: &mut [i32; MR * NR], xq: &[u8], mr: usize, kp: usize, panel: &[i8], offset: &[i32], kernel: Kernel) {
    debug_assert!(xq.len() >= mr * kp && panel.len() >= kp * NR && offset.len() >= NR && mr >= 1);
    // SAFETY (both x86 arms): the CPU has the kernel's features (`Kernel::available`); the
    // slices hold mr·kp, kp·NR and NR elements (checked above), which is all the kernels read.
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => unsafe { x86::tile_vnni(acc, xq, mr, kp, panel, offset) },
        #[cfg(target_arch = "x86_64")]
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { x86::tile_avxvnni(acc, xq, mr, kp, panel, offset) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::tile_avx2(acc, xq, mr, kp, panel) },
        _ => tile_portable(acc, xq, mr, kp, panel),
    }
}

/// The reference loop: the same sums in any order (integers are exact).
fn tile_portable(acc: &mut [i32; MR * NR], xq: &[u8], mr: usize, kp: usize, panel: &[i8]) {
    for i in 0..mr {
        let xr = &xq[i * kp..][..kp];
        let a = &mut acc[i * NR..][..NR];
        a.fill(0);
        for (g, xg) in xr.chunks_exact(4).enumerate() {
            let pg = &panel[g * 4 * NR..][..4 * NR];
            let xg = [xg[0] as i32 - 128, xg[1] as i32 - 128, xg[2] as i32 - 128, xg[3] as i32 - 128];
            for j in 0..NR {
                let wj = &pg[4 * j..4 * j + 4];
                a[j] += xg[0] * wj[0] as i32 + xg[1] * wj[1] as i32 + xg[2] * wj[2] as i32 + xg[3] * wj[3] as i32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// [`super::epilogue`] compiled for AVX-512 (the same operations, 16 lanes at a time).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn epilogue_avx512(y: *mut f32, acc: &[i32], sx: f32, sw: &[f32], bias: Option<&[f32]>) {
        // SAFETY: the caller's contract is the generic one's.
        unsafe { super::epilogue(y, acc, sx, sw, bias) }
    }

    /// [`super::epilogue`] compiled for AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn epilogue_avx2(y: *mut f32, acc: &[i32], sx: f32, sw: &[f32], bias: Option<&[f32]>) {
        // SAFETY: the caller's contract is the generic one's.
        unsafe { super::epilogue(y, acc, sx, sw, bias) }
    }

    /// [`super::quantize_row_u8`] 16 floats at a time: the same max, the same products, the
    /// same ties-to-even rounding (`vcvtps2dq` under the default MXCSR), the same clamp.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row_u8(x: &[f32], qr: &mut [u8]) -> f32 {
        let n = x.len();
        let full = n / 16 * 16;
        let (mut vmax, mut vpoison) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let zero = _mm512_setzero_ps();
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 ≤ n.
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
            vpoison = _mm512_add_ps(vpoison, _mm512_mul_ps(v, zero));
        }
        let mut amax = _mm512_reduce_max_ps(vmax);
        let mut poison = _mm512_reduce_add_ps(vpoison);
        for &v in &x[full..] {
            amax = amax.max(v.abs());
            poison += v * 0.0;
        }
        // A NaN lane makes the sum NaN whatever the order; a max ignores it but poison does not.
        let poison = if poison == 0.0 { 0.0 } else { f32::NAN };
        let inv = if amax > 0.0 && poison == 0.0 { 127.0 / amax } else { 0.0 };
        let (vinv, lo, hi, off) = (_mm512_set1_ps(inv), _mm512_set1_epi32(-127), _mm512_set1_epi32(127), _mm512_set1_epi32(128));
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 ≤ n ≤ qr.len().
            unsafe {
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), vinv));
                let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
                _mm_storeu_si128(qr.as_mut_ptr().add(i) as *mut _, _mm512_cvtepi32_epi8(q));
            }
        }
        for (d, &v) in qr[full..].iter_mut().zip(&x[full..]) {
            *d = (super::round_even(v * inv).clamp(-127.0, 127.0) as i32 + 128) as u8;
        }
        amax / 127.0 + poison
    }

    /// MR×NR tile on `vpdpbusd`: per group of four inputs, each row's four u8 are broadcast to
    /// all lanes and multiplied with the panel's 2×64 bytes (16 columns × 4 inputs each).
    /// 16 accumulators + 2 weight vectors + 1 broadcast of the 32 zmm registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni(acc: &mut [i32; MR * NR], xq: &[u8], mr: usize, kp: usize, panel: &[i8], offset: &[i32]) {
        let mut c = [[_mm512_setzero_si512(); 2]; MR];
        // Rows past mr repeat the last row (their sums are computed and dropped).
        let row = |i: usize| unsafe { xq.as_ptr().add(i.min(mr - 1) * kp) };
        let rp: [*const u8; MR] = std::array::from_fn(row);
        let mut bp = panel.as_ptr();
        for g in 0..kp / 4 {
            // SAFETY: group g < kp/4 of a panel of kp·NR bytes; rows of kp bytes.
            unsafe {
                let b0 = _mm512_loadu_si512(bp as *const _);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const _);
                for i in 0..MR {
                    let a = _mm512_set1_epi32((rp[i].add(4 * g) as *const i32).read_unaligned());
                    c[i][0] = _mm512_dpbusd_epi32(c[i][0], a, b0);
                    c[i][1] = _mm512_dpbusd_epi32(c[i][1], a, b1);
                }
                bp = bp.add(4 * NR);
            }
        }
        // SAFETY: offset holds NR = 32 i32; so does an acc row.
        let (o0, o1) = unsafe { (_mm512_loadu_si512(offset.as_ptr() as *const _), _mm512_loadu_si512(offset.as_ptr().add(16) as *const _)) };
        for (row, ci) in acc.chunks_exact_mut(NR).zip(&c).take(mr) {
            unsafe {
                _mm512_storeu_si512(row.as_mut_ptr() as *mut _, _mm512_sub_epi32(ci[0], o0));
                _mm512_storeu_si512(row.as_mut_ptr().add(16) as *mut _, _mm512_sub_epi32(ci[1], o1));
            }
        }
    }

    /// The 256-bit kernels' shared shape: MR×NR in pairs of rows, 8 accumulators (4 vectors of 8
    /// columns each, per row) + 4 weight vectors of 8 columns × 4 inputs per group. `$prep` turns
    /// a row's four u8 into what `$step` needs; `$step` adds one weight vector's products to an
    /// accumulator; `$offset` (a slice of NR, or none) is subtracted before the store.
    macro_rules! tile_256 {
        ($acc:ident, $xq:ident, $mr:ident, $kp:ident, $panel:ident, |$x4:ident| $prep:expr, |$cv:ident, $p:ident, $wv:ident| $step:expr, $offset:expr) => {{
            let offset: Option<&[i32]> = $offset;
            let mut i = 0;
            while i < $mr {
                let rows = if i + 1 < $mr { 2 } else { 1 };
                let mut c = [[_mm256_setzero_si256(); 4]; 2];
                let mut bp = $panel.as_ptr();
                for g in 0..$kp / 4 {
                    // SAFETY: group g < kp/4 of a panel of kp·NR bytes; rows i, i + rows − 1 < mr.
                    unsafe {
                        let w = [0, 1, 2, 3].map(|v| _mm256_loadu_si256(bp.add(32 * v) as *const _));
                        for (r, cr) in c.iter_mut().enumerate().take(rows) {
                            let $x4 = ($xq.as_ptr().add((i + r) * $kp + 4 * g) as *const i32).read_unaligned();
                            let $p = $prep;
                            for ($cv, $wv) in cr.iter_mut().zip(&w) {
                                *$cv = $step;
                            }
                        }
                        bp = bp.add(4 * NR);
                    }
                }
                for (r, cr) in c.iter().enumerate().take(rows) {
                    for (v, cv) in cr.iter().enumerate() {
                        // SAFETY: offset holds NR i32; row i + r < MR of acc, 8 i32 at column 8v < NR.
                        unsafe {
                            let out = match offset {
                                Some(o) => _mm256_sub_epi32(*cv, _mm256_loadu_si256(o.as_ptr().add(8 * v) as *const _)),
                                None => *cv,
                            };
                            _mm256_storeu_si256($acc.as_mut_ptr().add((i + r) * NR + 8 * v) as *mut _, out);
                        }
                    }
                }
                i += rows;
            }
        }};
    }

    /// MR×NR tile on AVX-VNNI (the VEX-encoded 256-bit `vpdpbusd` of CPUs with VNNI but without
    /// AVX-512, e.g. Intel's client cores since Alder Lake): [`tile_vnni`] at half the width.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(acc: &mut [i32; MR * NR], xq: &[u8], mr: usize, kp: usize, panel: &[i8], offset: &[i32]) {
        tile_256!(acc, xq, mr, kp, panel, |x4| _mm256_set1_epi32(x4), |cv, a, wv| _mm256_dpbusd_avx_epi32(*cv, a, *wv), Some(offset))
    }

    /// MR×NR tile on AVX2 without VNNI: per group, `vpmaddubsw(|q_x|, q_w · sign(q_x))` gives
    /// exact i16 pair sums (≤ 2·127² < 2¹⁵), `vpmaddwd` with ones adds the pairs into one i32 per
    /// column. `q_x` is the stored u8 with its top bit flipped (u8 − 128 as i8).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(acc: &mut [i32; MR * NR], xq: &[u8], mr: usize, kp: usize, panel: &[i8]) {
        let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        tile_256!(
            acc,
            xq,
            mr,
            kp,
            panel,
            |x4| {
                let q = _mm256_xor_si256(_mm256_set1_epi32(x4), flip);
                (q, _mm256_abs_epi8(q))
            },
            |cv, qa, wv| _mm256_add_epi32(*cv, _mm256_madd_epi16(_mm256_maddubs_epi16(qa.1, _mm256_sign_epi8(*wv, qa.0)), ones)),
            None
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn rand(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32 * s).collect()
    }

    /// The ragged shapes: IN not a multiple of 4, OUT not a multiple of NR, rows not a multiple
    /// of MR or RB, a single row, and enough work to go parallel.
    const SHAPES: [(usize, usize, usize); 6] = [(1, 5, 3), (7, 33, 70), (9, 64, 32), (130, 37, 65), (3, 384, 1536), (200, 384, 96)];

    #[test]
    fn every_kernel_this_cpu_runs_agrees_bitwise_with_the_portable_one() {
        let kernels = Kernel::available();
        eprintln!("int8 kernels on this CPU: {kernels:?}");
        if kernels.len() == 1 {
            eprintln!("SKIPPED: neither AVX-512 VNNI nor AVX2 on this CPU (the portable kernel alone is checked)");
        }
        let mut rng = Rng::new(3);
        for (rows, inp, out) in SHAPES {
            let w = Int8Weight::quantize(&Tensor::from_vec(rand(&mut rng, out * inp, 0.05), &[out, inp]).unwrap()).unwrap();
            let x = rand(&mut rng, rows * inp, 1.0);
            let b = rand(&mut rng, out, 0.1);
            let want = forward(&x, rows, &w, Some(&b), Kernel::Portable);
            for &k in &kernels {
                let got = forward(&x, rows, &w, Some(&b), k);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{k:?} {rows}×{inp}×{out}");
            }
        }
        // Every code at ±127 with matching signs: each product is 127², each pair of products
        // 2·127² — the most an i16 step of the avx2 kernel holds — and the sums are exact.
        let (rows, inp, out) = (9, 68, 33);
        let sign = |i: usize| if (i * 7919).is_multiple_of(3) { -1.0f32 } else { 1.0 };
        let x: Vec<f32> = (0..rows * inp).map(|i| sign(i % inp)).collect();
        let w = Int8Weight::quantize(&Tensor::from_vec((0..out * inp).map(|i| 0.5 * sign(i % inp)).collect(), &[out, inp]).unwrap()).unwrap();
        for &k in &kernels {
            let y = forward(&x, rows, &w, None, k);
            // s_x · s_w · Σ 127² = (1/127)(0.5/127)·inp·127² = inp / 2, exactly.
            assert!(y.iter().all(|&v| v == inp as f32 / 2.0), "{k:?}: {:?}", &y[..4]);
        }
    }

    /// Every kernel against an f64 product of the dequantized operands (which is what the
    /// integer arithmetic computes exactly), and within the quantization bound of the f32 layer.
    #[test]
    fn matches_the_dequantized_product_and_the_error_bound() {
        let mut rng = Rng::new(5);
        for kernel in Kernel::available() {
            for (rows, inp, out) in SHAPES {
                let wf = rand(&mut rng, out * inp, 0.05);
                let w = Int8Weight::quantize(&Tensor::from_vec(wf.clone(), &[out, inp]).unwrap()).unwrap();
                let wq = w.dequantize();
                let mut x = rand(&mut rng, rows * inp, 1.0);
                x[..inp].iter_mut().for_each(|v| *v = 0.0); // an all-zero row: scale 0
                let b = rand(&mut rng, out, 0.1);
                let y = forward(&x, rows, &w, Some(&b), kernel);
                for r in 0..rows {
                    let xr = &x[r * inp..][..inp];
                    let mut xq = vec![0i8; inp];
                    let sx = quantize_row(xr, &mut xq) as f64;
                    for n in 0..out {
                        let (wr, wqr) = (&wf[n * inp..][..inp], &wq[n * inp..][..inp]);
                        let deq: f64 = (0..inp).map(|k| sx * xq[k] as f64 * wqr[k] as f64).sum::<f64>() + b[n] as f64;
                        let exact: f64 = (0..inp).map(|k| xr[k] as f64 * wr[k] as f64).sum::<f64>() + b[n] as f64;
                        let got = y[r * out + n] as f64;
                        assert!((got - deq).abs() <= 1e-5 + 1e-5 * deq.abs(), "{rows}×{inp}×{out} ({r},{n}): {got} vs {deq}");
                        // |x·w − x̂·ŵ| ≤ Σ |x|·|w − ŵ| + |ŵ|·|x − x̂| ≤ Σ |x|·s_w/2 + |ŵ|·s_x/2.
                        let sw = w.scale[n] as f64;
                        let bound: f64 = (0..inp).map(|k| xr[k].abs() as f64 * sw / 2.0 + (wqr[k] as f64).abs() * sx / 2.0).sum::<f64>();
                        assert!((got - exact).abs() <= bound * 1.001 + 1e-6, "{rows}×{inp}×{out} ({r},{n}): {got} vs f32 {exact}, bound {bound}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_non_finite_input_row_gives_nan_outputs_in_its_row_only() {
        let mut rng = Rng::new(9);
        let (rows, inp, out) = (20, 37, 40);
        let w = Int8Weight::quantize(&Tensor::from_vec(rand(&mut rng, out * inp, 0.05), &[out, inp]).unwrap()).unwrap();
        for kernel in Kernel::available() {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = rand(&mut rng, rows * inp, 1.0);
                x[3 * inp + 35] = bad; // in the scalar tail of the vector quantizer
                x[7 * inp + 2] = bad; // in its vector part
                let y = forward(&x, rows, &w, None, kernel);
                for r in 0..rows {
                    let row = &y[r * out..][..out];
                    assert!(if r == 3 || r == 7 { row.iter().all(|v| v.is_nan()) } else { row.iter().all(|v| v.is_finite()) }, "row {r}, {bad}, {kernel:?}");
                }
            }
        }
    }

    #[test]
    fn quantization_is_per_channel_and_saturates_nothing() {
        // Channel 0 is 100× larger than channel 1: per-channel scales keep channel 1's codes.
        let w = Tensor::from_vec(vec![100.0f32, -50.0, 1.0, -0.5], &[2, 2]).unwrap();
        let q = Int8Weight::quantize(&w).unwrap();
        assert_eq!(q.dequantize(), vec![100.0, 100.0 / 127.0 * -64.0, 1.0, 1.0 / 127.0 * -64.0]);
        assert_eq!(q.offset[..2], [128 * (127 - 64), 128 * (127 - 64)]);
        assert!(q.offset[2..].iter().all(|&o| o == 0) && q.offset.len() == NR, "padded to a panel");
    }

    #[test]
    fn refuses_training_and_bad_shapes() {
        let w = Int8Weight::quantize(&Tensor::from_vec(vec![0.5f32; 6], &[2, 3]).unwrap()).unwrap();
        let x = Tensor::from_vec(vec![1.0f32; 6], &[2, 3]).unwrap().requires_grad();
        let e = linear_int8(&Tape::training(0), &x, &w, None).unwrap_err().to_string();
        assert!(e.contains("no backward"), "{e}");
        let y = linear_int8(&Tape::inference(), &x, &w, None).unwrap();
        assert_eq!(y.shape(), [2, 2]);
        let bad = Tensor::from_vec(vec![1.0f32; 4], &[2, 2]).unwrap();
        assert!(linear_int8(&Tape::inference(), &bad, &w, None).unwrap_err().to_string().contains("does not fit"));
        let b3 = Tensor::from_vec(vec![1.0f32; 3], &[3]).unwrap();
        assert!(linear_int8(&Tape::inference(), &x, &w, Some(&b3)).unwrap_err().to_string().contains("bias"));
        assert!(Int8Weight::quantize(&Tensor::from_vec(vec![1.0f32; 3], &[3]).unwrap()).is_err());
        let e = Int8Weight::quantize(&Tensor::from_vec(vec![1.0f32, 2.0, f32::NAN, 0.5], &[2, 2]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("[1, 0] is NaN"), "{e}");
    }
}

//! The bf16 GEMM behind `--bf16` (PyTorch's CPU autocast to bfloat16):
//! `C (M, N) f32 += bf16(op(A)) · bf16(op(B))`, products exact and sums in f32.
//!
//! Both operands are rounded to bf16 (round to nearest even; NaN stays NaN, subnormals flush to
//! zero as the hardware conversion does) while they are packed, as pairs along k: one u32 holds
//! (k even, k odd). The micro-kernel is AVX-512 BF16's `vdpbf16ps`, which per f32 lane adds two
//! bf16 products to the accumulator — 32 multiply-adds per instruction, twice an f32 FMA's 16.
//! On this project's CPU (2-core AMD EPYC, Zen 5) a register-bound loop of it runs at 1.85× the
//! f32 FMA rate. CPUs without AVX512_BF16 run the portable twin, which mirrors the instruction's
//! arithmetic step by step (each bf16·bf16 product is exact in f32; the two are added one after
//! the other, odd k first, each sum rounded to nearest, subnormal results flushed), so a model
//! trained with `--bf16` computes the same bits on either (tested).
//!
//! The blocking is `gemm.rs`'s (B packed once into column panels, row blocks of C per rayon task,
//! A packed per KC slice), with a 6×32 tile: 12 zmm accumulators, two B vectors and six A
//! broadcasts per k pair. Accumulators start at zero for each KC slice and are added into C at
//! its end, as in the f32 kernels.

use rayon::prelude::*;

use super::gemm::MatRef;

const MR: usize = 6;
const NR: usize = 32;
/// k pairs per slice (K = 384): the B panel slice, 192 × 32 × 4 B = 24 KiB, stays in L1.
const KC2: usize = 192;
const MC: usize = 192;
const NC: usize = 512;

/// f32 → bf16 bits, round to nearest even. NaN stays a (quiet) NaN; subnormal inputs become a
/// signed zero, as `vcvtneps2bf16` does; values past the bf16 range round to ±inf.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    // Branch-free, so the conversion loops vectorize.
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    let subnormal = b & 0x7f80_0000 == 0;
    let r = if nan { (b >> 16) | 0x0040 } else if subnormal { (b >> 16) & 0x8000 } else { rounded };
    r as u16
}

/// The f32 value of bf16 bits (exact).
#[inline(always)]
pub(crate) fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// x rounded to bf16 and back: what the GEMM sees of an operand.
#[cfg(test)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    bf16_value(bf16_bits(x))
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// Whether the CPU has AVX512_BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
pub(crate) fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How a bf16 GEMM runs. All three give the same bits (tested), but for sums that fall into the
/// f32 subnormal range, which `vdpbf16ps` and the portable loop flush to zero and an FMA keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `vdpbf16ps`, where the CPU has AVX512_BF16.
    Avx512Bf16,
    /// Elsewhere: the f32 GEMM (AVX-512, AVX2+FMA or portable) on operands rounded to bf16, with
    /// each pair's two k swapped. Each bf16·bf16 product is exact in f32, so an FMA chain over
    /// (k+1, k) is exactly `vdpbf16ps`' "high product, then low"; the f32 GEMM's k slices
    /// (KC = 384) are the bf16 one's (KC2 = 192 pairs) and both add a slice's sum into C at its
    /// end. About as fast as f32 there, instead of a scalar loop.
    F32Gemm,
    /// The instruction's arithmetic step by step in scalar code: the reference (tests).
    Portable,
}

/// The kernel this process uses: `ENGRAM_GEMM_BF16=portable|f32` forces one, else `vdpbf16ps`
/// where the CPU has it and the f32 GEMM elsewhere.
pub(crate) fn kernel() -> Kernel {
    static K: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *K.get_or_init(|| match std::env::var("ENGRAM_GEMM_BF16").as_deref() {
        Ok("portable") => Kernel::Portable,
        Ok("f32") => Kernel::F32Gemm,
        _ if cpu_has_bf16() => Kernel::Avx512Bf16,
        _ => Kernel::F32Gemm,
    })
}

const _: () = assert!(super::gemm::KC == 2 * KC2, "the f32 GEMM's k slices must be the bf16 one's");

/// `c (M, N row-major) += bf16(a) · bf16(b)`. `parallel` splits the rows of C over rayon tasks.
pub(crate) fn gemm_bf16(c: &mut [f32], a: MatRef<f32>, b: MatRef<f32>, parallel: bool) {
    gemm_bf16_with(c, a, b, parallel, kernel())
}

/// [`gemm`](super::gemm::gemm), or with `bf16` and f32 data [`gemm_bf16`] (f64 is never cast):
/// the product an autocast-aware op runs.
pub(crate) fn gemm_autocast<T: crate::float::Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool, bf16: bool) {
    if bf16 {
        if let (Some(a32), Some(b32)) = (a.as_f32(), b.as_f32()) {
            gemm_bf16(T::as_f32_mut(c).expect("C has A's element type"), a32, b32, parallel);
            return;
        }
    }
    super::gemm::gemm(c, a, b, parallel)
}

fn gemm_bf16_with(c: &mut [f32], a: MatRef<f32>, b: MatRef<f32>, parallel: bool, k: Kernel) {
    debug_assert_eq!(b.rows, a.cols);
    debug_assert_eq!(c.len(), a.rows * b.cols);
    if a.rows == 0 || b.cols == 0 || a.cols == 0 {
        return;
    }
    if k == Kernel::F32Gemm {
        let (a2, kk) = swapped_values(a, parallel);
        let (bt2, _) = swapped_values(b.t(), parallel);
        super::gemm::gemm(c, MatRef::new(&a2, a.rows, kk, false), MatRef::new(&bt2, kk, b.cols, true), parallel);
        return;
    }
    let bp = pack_b_bf16(b, parallel);
    gemm_bf16_packed_with(c, a, &bp, b.cols, parallel, k == Kernel::Avx512Bf16);
}

/// A weight B (K, N) packed once for [`gemm_weight`] (inference keeps it with the tensor), in
/// the form the process's kernel wants: bf16 pairs (as f32 bit patterns) or, for
/// [`Kernel::F32Gemm`], the f32 GEMM's packing of the rounded, pair-swapped values.
pub(crate) fn pack_weight(b: MatRef<f32>, parallel: bool) -> Vec<f32> {
    if kernel() == Kernel::F32Gemm {
        let (bt2, kk) = swapped_values(b.t(), parallel);
        return super::gemm::pack_b(MatRef::new(&bt2, kk, b.cols, true), parallel);
    }
    pack_b_bf16(b, parallel).into_iter().map(f32::from_bits).collect()
}

/// `c (M, N) += bf16(a) · B` with B from [`pack_weight`] (K = `a.cols`).
pub(crate) fn gemm_weight(c: &mut [f32], a: MatRef<f32>, packed: &[f32], n: usize, parallel: bool) {
    if a.rows == 0 || n == 0 || a.cols == 0 {
        return;
    }
    match kernel() {
        Kernel::F32Gemm => {
            let (a2, kk) = swapped_values(a, parallel);
            super::gemm::gemm_packed(c, MatRef::new(&a2, a.rows, kk, false), packed, n, parallel);
        }
        k => gemm_bf16_packed_with(c, a, pairs_of(packed), n, parallel, k == Kernel::Avx512Bf16),
    }
}

/// `m` (R, C) rounded to bf16 as f32 values, row-major (R, 2⌈C/2⌉), each pair of columns swapped
/// (and zero-padded): the operand [`Kernel::F32Gemm`] hands the f32 GEMM.
fn swapped_values(m: MatRef<f32>, parallel: bool) -> (Vec<f32>, usize) {
    let pr = to_pairs(m, parallel);
    let k2 = m.cols.div_ceil(2);
    let mut out = vec![0f32; m.rows * 2 * k2];
    let fill = |(i, row): (usize, &mut [f32])| {
        for p in 0..k2 {
            let v = pr.data[i * pr.rs + p * pr.cs];
            row[2 * p] = bf16_value((v >> 16) as u16);
            row[2 * p + 1] = bf16_value(v as u16);
        }
    };
    if parallel && m.rows > 64 {
        out.par_chunks_mut(2 * k2).enumerate().for_each(fill);
    } else {
        out.chunks_mut(2 * k2).enumerate().for_each(fill);
    }
    (out, 2 * k2)
}

/// A matrix converted to bf16 pairs along its columns, once per GEMM: element (i, p) holds
/// columns 2p and 2p+1 of row i (zero past the last column) at `data[i·rs + p·cs]`. The packing
/// loops then copy u32s, as the f32 GEMM copies floats, instead of converting each element once
/// per column block.
struct Pairs {
    data: Vec<u32>,
    rs: usize,
    cs: usize,
}

/// `m` as pairs along its columns, read in memory order: a row-major `m` row by row, a stored-
/// transposed one (columns contiguous) two columns at a time.
fn to_pairs(m: MatRef<f32>, parallel: bool) -> Pairs {
    let (rows, cols) = (m.rows, m.cols);
    let k2 = cols.div_ceil(2);
    let (rs, cs) = m.strides();
    let mut data = vec![0u32; rows * k2];
    if cs == 1 {
        let conv = |(i, dst): (usize, &mut [u32])| {
            convert_row(&m.data[i * rs..i * rs + cols], dst);
        };
        if parallel && rows > 64 {
            data.par_chunks_mut(k2).enumerate().for_each(conv);
        } else {
            data.chunks_mut(k2).enumerate().for_each(conv);
        }
        Pairs { data, rs: k2, cs: 1 }
    } else if rs == 1 {
        // Column c is contiguous: pair p of every row is columns 2p and 2p+1, side by side.
        let conv = |(p, dst): (usize, &mut [u32])| {
            let c0 = &m.data[2 * p * cs..2 * p * cs + rows];
            let c1 = (2 * p + 1 < cols).then(|| &m.data[(2 * p + 1) * cs..(2 * p + 1) * cs + rows]);
            convert_cols(c0, c1, dst);
        };
        if parallel && k2 > 64 {
            data.par_chunks_mut(rows).enumerate().for_each(conv);
        } else {
            data.chunks_mut(rows).enumerate().for_each(conv);
        }
        Pairs { data, rs: 1, cs: rows }
    } else {
        for i in 0..rows {
            for p in 0..k2 {
                let hi = if 2 * p + 1 < cols { m.at(i, 2 * p + 1) } else { 0.0 };
                data[i * k2 + p] = pair(m.at(i, 2 * p), hi);
            }
        }
        Pairs { data, rs: k2, cs: 1 }
    }
}

/// `dst[p] = pair(src[2p], src[2p+1])` (zero past the end of `src`).
fn convert_row(src: &[f32], dst: &mut [u32]) {
    debug_assert_eq!(dst.len(), src.len().div_ceil(2));
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // only x86 has a vector part
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cpu_has_bf16() {
        done = src.len() / 32 * 16;
        // SAFETY: AVX512_BF16 checked; reads src[..2·done] and writes dst[..done], in bounds.
        unsafe { avx512bf16::convert_row(src.as_ptr(), dst.as_mut_ptr(), done / 16) };
    }
    let mut it = src[2 * done..].chunks_exact(2);
    for (d, pr) in dst[done..].iter_mut().zip(&mut it) {
        *d = pair(pr[0], pr[1]);
    }
    if let [last] = it.remainder() {
        *dst.last_mut().expect("an odd tail has a pair") = pair(*last, 0.0);
    }
}

/// `dst[i] = pair(c0[i], c1[i])` (zero when there is no `c1`).
fn convert_cols(c0: &[f32], c1: Option<&[f32]>, dst: &mut [u32]) {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // only x86 has a vector part
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cpu_has_bf16() {
        done = dst.len() / 16 * 16;
        let hi = c1.map_or(std::ptr::null(), |c| c.as_ptr());
        assert!(c0.len() >= done && c1.is_none_or(|c| c.len() >= done));
        // SAFETY: AVX512_BF16 checked; reads c0/c1[..done] and writes dst[..done], in bounds.
        unsafe { avx512bf16::convert_cols(c0.as_ptr(), hi, dst.as_mut_ptr(), done / 16) };
    }
    match c1 {
        Some(c1) => dst[done..].iter_mut().zip(c0[done..].iter().zip(&c1[done..])).for_each(|(d, (&lo, &hi))| *d = pair(lo, hi)),
        None => dst[done..].iter_mut().zip(&c0[done..]).for_each(|(d, &lo)| *d = pair(lo, 0.0)),
    }
}

/// B (K, N) packed for [`gemm_bf16_packed`]: panel jp holds the k pairs 0..⌈K/2⌉ of columns
/// jp·32..jp·32+32, pair-major, zero-padded (an odd K's last pair has a zero high half).
fn pack_b_bf16(b: MatRef<f32>, parallel: bool) -> Vec<u32> {
    let (k, n) = (b.rows, b.cols);
    let k2 = k.div_ceil(2);
    let n_panels = n.div_ceil(NR);
    // Bᵀ's rows are B's columns: pairs (j, p) of column j.
    let bt = to_pairs(b.t(), parallel);
    let mut bp = vec![0u32; n_panels * k2 * NR];
    let pack_panel = |(jp, dst): (usize, &mut [u32])| {
        let j0 = jp * NR;
        let nr = NR.min(n - j0);
        if bt.cs == 1 {
            for j in 0..nr {
                let col = &bt.data[(j0 + j) * bt.rs..(j0 + j) * bt.rs + k2];
                for (p, &v) in col.iter().enumerate() {
                    dst[p * NR + j] = v;
                }
            }
        } else {
            for p in 0..k2 {
                dst[p * NR..p * NR + nr].copy_from_slice(&bt.data[p * bt.cs + j0..p * bt.cs + j0 + nr]);
            }
        }
    };
    if parallel && n_panels > 1 {
        bp.par_chunks_mut(k2 * NR).enumerate().for_each(pack_panel);
    } else {
        bp.chunks_mut(k2 * NR).enumerate().for_each(pack_panel);
    }
    bp
}

/// The packed pairs kept in an f32 buffer (their bit patterns; `Tensor::derived` holds a `Buf`).
fn pairs_of(bits: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is a valid u32;
    // the slice borrows `bits` for its whole life.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<u32>(), bits.len()) }
}

fn gemm_bf16_packed_with(c: &mut [f32], a: MatRef<f32>, bp: &[u32], n: usize, parallel: bool, hw: bool) {
    let (m, k) = (a.rows, a.cols);
    let k2 = k.div_ceil(2);
    assert_eq!(bp.len(), n.div_ceil(NR) * k2 * NR, "gemm_bf16_packed: packed B does not fit (K = {k}, N = {n})");
    assert_eq!(c.len(), m * n, "gemm_bf16: C is not M × N");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    if parallel {
        super::gemm::prefault(c);
    }
    let ap_all = to_pairs(a, parallel);
    let n_panels = n.div_ceil(NR);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let blocks = m.div_ceil(MC).div_ceil(threads) * threads;
    let mc = m.div_ceil(blocks).div_ceil(MR).max(1) * MR;
    let row_block = |(ci, cblk): (usize, &mut [f32])| {
        let i0 = ci * mc;
        let mrows = cblk.len() / n;
        let m_panels = mrows.div_ceil(MR);
        // Full MR-row panels are read straight from the converted A (no packing); only a last,
        // partial panel is copied into this zero-padded scratch panel.
        let tail = mrows % MR;
        let mut ap_tail = vec![0u32; if tail > 0 { KC2 * MR } else { 0 }];
        let mut edge = [0f32; MR * NR];
        for jb in (0..n_panels).step_by(NC / NR) {
            let jb_end = (jb + NC / NR).min(n_panels);
            let mut p0 = 0;
            while p0 < k2 {
                let kc2 = KC2.min(k2 - p0);
                if tail > 0 {
                    pack_a(&mut ap_tail[..kc2 * MR], &ap_all, i0 + (m_panels - 1) * MR, tail, p0, kc2);
                }
                for jp in jb..jb_end {
                    let bpanel = &bp[(jp * k2 + p0) * NR..(jp * k2 + p0 + kc2) * NR];
                    let nr = NR.min(n - jp * NR);
                    for ip in 0..m_panels {
                        let mr = MR.min(mrows - ip * MR);
                        let apanel = if mr == MR {
                            let at = (i0 + ip * MR) * ap_all.rs + p0 * ap_all.cs;
                            APanel { data: &ap_all.data[at..], rs: ap_all.rs, ps: ap_all.cs }
                        } else {
                            APanel { data: &ap_tail, rs: 1, ps: MR }
                        };
                        let base = ip * MR * n + jp * NR;
                        if mr == MR && nr == NR {
                            tile(hw, kc2, apanel, bpanel, &mut cblk[base..], n);
                        } else {
                            // Edge tile: through a full-size scratch tile, so the kernel never
                            // reads or writes outside C.
                            edge.fill(0.0);
                            tile(hw, kc2, apanel, bpanel, &mut edge, NR);
                            for i in 0..mr {
                                let row = &mut cblk[base + i * n..base + i * n + nr];
                                row.iter_mut().zip(&edge[i * NR..i * NR + nr]).for_each(|(c, e)| *c += e);
                            }
                        }
                    }
                }
                p0 += kc2;
            }
        }
    };
    if parallel && m > mc {
        c.par_chunks_mut(mc * n).enumerate().for_each(row_block);
    } else {
        c.chunks_mut(mc * n).enumerate().for_each(row_block);
    }
}

/// Packs rows r0..r0+mr and k pairs p0..p0+kc2 of A into one MR-tall panel, pair-major,
/// zero-padded to MR rows.
fn pack_a(dst: &mut [u32], a: &Pairs, r0: usize, mr: usize, p0: usize, kc2: usize) {
    if mr < MR {
        dst.fill(0);
    }
    if a.cs == 1 {
        for i in 0..mr {
            let row = &a.data[(r0 + i) * a.rs + p0..(r0 + i) * a.rs + p0 + kc2];
            for (p, &v) in row.iter().enumerate() {
                dst[p * MR + i] = v;
            }
        }
    } else {
        for p in 0..kc2 {
            let at = (p0 + p) * a.cs + r0 * a.rs;
            dst[p * MR..p * MR + mr].copy_from_slice(&a.data[at..at + mr]);
        }
    }
}

/// MR rows of A's pairs: pair p of row i at `data[i·rs + p·ps]` — the converted A itself
/// (row-major: rs = ⌈K/2⌉, ps = 1; stored transposed: rs = 1, ps = M) or a packed tail panel.
#[derive(Clone, Copy)]
struct APanel<'a> {
    data: &'a [u32],
    rs: usize,
    ps: usize,
}

/// The MR×NR tile at `c` (row stride `ldc`, at least MR rows of NR) += A panel · B panel.
#[inline(always)]
fn tile(hw: bool, kc2: usize, ap: APanel, bp: &[u32], c: &mut [f32], ldc: usize) {
    assert!(kc2 > 0 && ap.data.len() > (MR - 1) * ap.rs + (kc2 - 1) * ap.ps && bp.len() >= kc2 * NR, "gemm_bf16 panels too short");
    assert!(c.len() >= (MR - 1) * ldc + NR, "gemm_bf16 tile outside C");
    #[cfg(target_arch = "x86_64")]
    if hw {
        // SAFETY: `hw` is only true for `Kernel::Avx512Bf16`, chosen only when `cpu_has_bf16()`; the
        // panel extents and the tile's were asserted above.
        unsafe { avx512bf16::kernel(kc2, ap.data.as_ptr(), ap.rs, ap.ps, bp.as_ptr(), c.as_mut_ptr(), ldc) };
        return;
    }
    let _ = hw;
    tile_portable(kc2, ap, bp, c, ldc);
}

/// One `vdpbf16ps` lane: `acc + a.hi·b.hi + a.lo·b.lo`, in that order, each sum rounded to
/// nearest even and a subnormal sum flushed to zero. The products are exact (8-bit significands);
/// the bf16 inputs are never subnormal (packing flushed them).
#[inline(always)]
pub(crate) fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let hi = bf16_value((a >> 16) as u16) * bf16_value((b >> 16) as u16);
    let lo = bf16_value(a as u16) * bf16_value(b as u16);
    ftz(ftz(acc + ftz(hi)) + ftz(lo))
}

#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

fn tile_portable(kc2: usize, ap: APanel, bp: &[u32], c: &mut [f32], ldc: usize) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc2 {
        let bv = &bp[p * NR..p * NR + NR];
        for (i, row) in acc.iter_mut().enumerate() {
            let av = ap.data[i * ap.rs + p * ap.ps];
            for (x, &bj) in row.iter_mut().zip(bv) {
                *x = dot_pair(*x, av, bj);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        c[i * ldc..i * ldc + NR].iter_mut().zip(row).for_each(|(c, a)| *c += a);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 32·`blocks` floats to 16·`blocks` pairs (`vcvtne2ps2bf16`: round to nearest even, NaN
    /// quieted, subnormal inputs to zero — the scalar `bf16_bits`, bit for bit, tested).
    ///
    /// # Safety
    /// AVX512_BF16; `src` readable for 32·blocks floats, `dst` writable for 16·blocks u32.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_row(src: *const f32, dst: *mut u32, blocks: usize) {
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            for b in 0..blocks {
                let lo = _mm512_loadu_ps(src.add(32 * b));
                let hi = _mm512_loadu_ps(src.add(32 * b + 16));
                // Lower 16 bf16 from `lo`, upper from `hi`: memory order, i.e. the 16 pairs.
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.add(16 * b) as *mut _, v);
            }
        }
    }

    /// 16·`blocks` pairs (c0[i] low, c1[i] high; a null `c1` gives zero high halves).
    ///
    /// # Safety
    /// AVX512_BF16; `c0` (and a non-null `c1`) readable for 16·blocks floats, `dst` writable for
    /// as many u32.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_cols(c0: *const f32, c1: *const f32, dst: *mut u32, blocks: usize) {
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            for b in 0..blocks {
                let lo: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(c0.add(16 * b))));
                let mut v = _mm512_cvtepu16_epi32(lo);
                if !c1.is_null() {
                    let hi: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(c1.add(16 * b))));
                    v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)));
                }
                _mm512_storeu_si512(dst.add(16 * b) as *mut _, v);
            }
        }
    }

    /// A full 6×32 tile of C (row stride `ldc`) += A panel · B panel over `kc2` k pairs.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 must be present; pair p of A's row i is at `a + i·ars + p·aps`
    /// (readable for p < kc2), `b` points at kc2·NR pairs, and `c` at MR rows of NR writable
    /// floats, `ldc` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel(kc2: usize, a: *const u32, ars: usize, aps: usize, b: *const u32, c: *mut f32, ldc: usize) {
        const _: () = assert!(MR == 6 && NR == 32);
        let z = _mm512_setzero_ps();
        let mut acc = [[z; 2]; MR];
        // SAFETY: p < kc2 keeps every read inside the panels; the stores stay in the C tile
        // (caller's contract). __m512i and __m512bh are the same 64 bytes.
        unsafe {
            let rows: [*const u32; MR] = std::array::from_fn(|i| a.add(i * ars));
            for p in 0..kc2 {
                let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
                let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
                for (ci, row) in acc.iter_mut().zip(&rows) {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*row.add(p * aps) as i32));
                    ci[0] = _mm512_dpbf16_ps(ci[0], x, v0);
                    ci[1] = _mm512_dpbf16_ps(ci[1], x, v1);
                }
            }
            for (i, ci) in acc.iter().enumerate() {
                let dst = c.add(i * ldc);
                _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), ci[0]));
                _mm512_storeu_ps(dst.add(16), _mm512_add_ps(_mm512_loadu_ps(dst.add(16)), ci[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn rand(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32 * s).collect()
    }

    #[test]
    fn conversion_rounds_to_nearest_even_and_keeps_specials() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        assert_eq!(bf16_value(bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_value(bf16_bits(f32::MAX)), f32::INFINITY, "past bf16's range: rounds up");
        assert_eq!(bf16_bits(-1e-40), 0x8000, "subnormals flush to a signed zero");
        let mut rng = Rng::new(3);
        for x in rand(&mut rng, 1000, 100.0) {
            let r = round_bf16(x);
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-8), "{x} → {r}");
        }
    }

    /// f64 reference of bf16(A)·bf16(B).
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| round_bf16(if ta { a[p * m + i] } else { a[i * k + p] }) as f64 * round_bf16(if tb { b[j * k + p] } else { b[p * n + j] }) as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn matches_the_f64_reference_of_the_rounded_operands() {
        let mut rng = Rng::new(11);
        // Ragged M (tail panels), odd K, N not a multiple of 32, K over one slice, both layouts.
        for &(m, k, n, ta, tb) in &[(1, 1, 1, false, false), (7, 5, 33, false, false), (13, 384, 70, false, true), (200, 97, 64, true, true), (6, 800, 32, false, false), (401, 33, 45, true, false)] {
            let a = rand(&mut rng, m * k, 1.0);
            let b = rand(&mut rng, k * n, 1.0);
            let init = rand(&mut rng, m * n, 1.0);
            let mut c = init.clone();
            gemm_bf16(&mut c, MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb), true);
            let want = reference(&a, &b, m, k, n, ta, tb);
            for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                let w = w + init[i] as f64;
                // f32 accumulation of k exact products of magnitude ≤ 1.
                let tol = 1e-6 * (k as f64 + 1.0) * 2.0;
                assert!((got as f64 - w).abs() <= tol, "({m},{k},{n}) at {i}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn vector_conversion_is_the_scalar_one_bit_for_bit() {
        if !cpu_has_bf16() {
            eprintln!("skipped: this CPU has no AVX512_BF16 (the scalar conversion is the only one)");
            return;
        }
        let mut rng = Rng::new(8);
        let mut v = rand(&mut rng, 4000, 10.0);
        let specials = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, 1e-40, -1e-40, f32::MIN_POSITIVE, 0.0, -0.0, 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        for (i, &x) in specials.iter().enumerate() {
            v[i * 37] = x;
            v[i * 37 + 1] = f32::from_bits(0x7f80_0001 + i as u32); // signalling NaNs
        }
        v.iter_mut().skip(3000).for_each(|x| *x = f32::from_bits(rng.next_u64() as u32)); // any bits
        let scalar = |a: f32, b: f32| pair(a, b);
        for len in [4000, 3999, 33, 31] {
            let src = &v[..len];
            let mut dst = vec![0u32; len.div_ceil(2)];
            convert_row(src, &mut dst);
            for (p, &d) in dst.iter().enumerate() {
                let want = scalar(src[2 * p], src.get(2 * p + 1).copied().unwrap_or(0.0));
                assert_eq!(d, want, "row len {len}, pair {p}: {:#x} {:#x}", src[2 * p].to_bits(), src.get(2 * p + 1).map_or(0, |x| x.to_bits()));
            }
        }
        let (c0, c1) = v.split_at(2000);
        for hi in [Some(c1), None] {
            let mut dst = vec![0u32; 1999];
            convert_cols(&c0[..1999], hi.map(|c| &c[..1999]), &mut dst);
            for (i, &d) in dst.iter().enumerate() {
                assert_eq!(d, scalar(c0[i], hi.map_or(0.0, |c| c[i])), "cols at {i}");
            }
        }
    }

    /// Every kernel this CPU can run against the portable reference, bit for bit, through both
    /// entry points (a GEMM with B packed per call, and a kept packed weight) — at shapes with
    /// odd K, K over several slices, ragged M and N, and transposed operands.
    #[test]
    fn every_kernel_agrees_bitwise_with_the_portable_one() {
        let mut kernels = vec![Kernel::F32Gemm];
        if cpu_has_bf16() {
            kernels.push(Kernel::Avx512Bf16);
        } else {
            eprintln!("note: this CPU has no AVX512_BF16; checked the f32-GEMM kernel only");
        }
        let mut rng = Rng::new(5);
        for &(m, k, n, ta, tb) in &[(6, 2, 32, false, false), (37, 385, 100, false, true), (128, 1536, 96, true, false), (9, 769, 33, true, true)] {
            let a = rand(&mut rng, m * k, 3.0);
            let b = rand(&mut rng, k * n, 0.5);
            let (am, bm) = (MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb));
            let mut want = vec![0.25f32; m * n];
            gemm_bf16_with(&mut want, am, bm, true, Kernel::Portable);
            for &kern in &kernels {
                let mut got = vec![0.25f32; m * n];
                gemm_bf16_with(&mut got, am, bm, true, kern);
                let diff = got.iter().zip(&want).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                assert_eq!(diff, 0, "{kern:?} ({m},{k},{n}): {diff} of {} outputs differ", m * n);
            }
        }
        // The kept packed weight (the process's kernel) gives the same bits as a per-call GEMM.
        let (m, k, n) = (50, 390, 70);
        let (a, w) = (rand(&mut rng, m * k, 1.0), rand(&mut rng, n * k, 1.0));
        let (am, wm) = (MatRef::new(&a, m, k, false), MatRef::new(&w, k, n, true));
        let mut once = vec![0f32; m * n];
        gemm_bf16(&mut once, am, wm, true);
        let mut kept = vec![0f32; m * n];
        gemm_weight(&mut kept, am, &pack_weight(wm, true), n, true);
        assert!(once.iter().zip(&kept).all(|(x, y)| x.to_bits() == y.to_bits()), "{:?}: packed weight differs", kernel());
    }

    #[test]
    fn a_nan_operand_reaches_its_outputs_only() {
        let (m, k, n) = (8, 10, 40);
        let mut a = vec![0.5f32; m * k];
        a[3 * k + 4] = f32::NAN;
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        gemm_bf16(&mut c, MatRef::new(&a, m, k, false), MatRef::new(&b, k, n, false), false);
        for i in 0..m {
            assert!(c[i * n..(i + 1) * n].iter().all(|v| v.is_nan() == (i == 3)), "row {i}");
        }
    }
}

//! The CPU GEMM every matmul-shaped op runs on: `C (M, N) += op(A) (M, K) · op(B) (K, N)`.
//!
//! Cache-blocked after the BLIS/GotoBLAS scheme: B is packed once into NR-wide column panels
//! (k-major), each rayon task owns MC rows of C and packs its A block into MR-tall row panels
//! per KC slice, and an MR×NR register-tiled micro-kernel does the FLOPs with the B panel in L1
//! and the A block in L2. Packing makes transposes free: op(A)/op(B) are read through strides.
//! On x86-64 with AVX2+FMA (checked once per call at run time) each tile goes to a micro-kernel
//! compiled with those features: hand-written intrinsics for f32 (6×16 tile = 12 ymm
//! accumulators), the generic loop recompiled with FMA for f64. The feature-enabled function is
//! the tile itself, not the driver: rayon closures do not inherit `#[target_feature]`, so a
//! feature-enabled driver would still run a software `fma` in its closures (measured: 1.1 GFLOP/s).

use rayon::prelude::*;

use crate::float::Float;

const MR: usize = 6;
const NR: usize = 16;
pub(crate) const KC: usize = 384;
/// Rows of C per task: A block MC×KC f32 = 192 KiB, sized for a 512 KiB–1 MiB L2, so each pass
/// over the packed B (which lives in L3) feeds 3× more FLOPs than MC = 64 did (the N = 3072
/// shape went from 49 to ~100 GFLOP/s). Shrunk for short M so every core still gets work.
const MC: usize = 192;
/// Columns of C per inner block (a multiple of NR): the task's C block mrows×NC stays in L2.
const NC: usize = 512;

/// A read-only matrix view: element (i, j) lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: Float> MatRef<'a, T> {
    /// `data` holds a row-major (rows, cols) matrix, or with `trans` a row-major (cols, rows)
    /// matrix read transposed.
    pub fn new(data: &'a [T], rows: usize, cols: usize, trans: bool) -> Self {
        debug_assert!(data.len() >= rows * cols);
        if trans {
            MatRef { data, rows, cols, rs: 1, cs: rows }
        } else {
            MatRef { data, rows, cols, rs: cols, cs: 1 }
        }
    }

    /// This view over f32 data (None for another element type).
    pub(crate) fn as_f32(self) -> Option<MatRef<'a, f32>> {
        Some(MatRef { data: T::as_f32(self.data)?, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs })
    }

    /// The same matrix read transposed: (cols, rows).
    pub(crate) fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// (row stride, column stride) into `data`.
    pub(crate) fn strides(&self) -> (usize, usize) {
        (self.rs, self.cs)
    }

    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c (M, N row-major) += a · b`. `parallel` splits the rows of C over rayon tasks.
pub(crate) fn gemm<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool) {
    debug_assert_eq!(b.rows, a.cols);
    debug_assert_eq!(c.len(), a.rows * b.cols);
    if a.rows == 0 || b.cols == 0 || a.cols == 0 {
        return;
    }
    if parallel {
        prefault(c);
    }
    gemm_impl::<T>(c, a, b, parallel, simd_available());
}

/// Map a large output's pages writable before the GEMM touches it. glibc serves allocations over
/// 32 MB (the ceiling of `M_MMAP_THRESHOLD`, see `util::tune_allocator`) as fresh zero-filled
/// mappings. The GEMM reads each C tile before it adds to it, so a fresh page is first mapped to
/// the kernel's shared zero page, and the store that follows takes a copy-on-write fault whose
/// TLB flush interrupts every other thread of the process: BERT-base's 50 MB FFN-up output
/// (4096×3072, no bias) ran at 110 GFLOP/s instead of ~400. `MADV_POPULATE_WRITE` (Linux ≥ 5.14)
/// maps every page writable in one call and changes no data, so accumulating GEMMs are
/// unaffected; where it is unavailable nothing changes. (A bias copied into the output first
/// already writes before the GEMM reads.)
pub(crate) fn prefault<T>(c: &mut [T]) {
    let bytes = std::mem::size_of_val(c);
    if bytes < 32 << 20 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_POPULATE_WRITE: i32 = 23;
        const PAGE: usize = 4096;
        let start = (c.as_mut_ptr() as usize).next_multiple_of(PAGE);
        let end = (c.as_mut_ptr() as usize + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside `c`, which is exclusively borrowed and mapped;
            // MADV_POPULATE_WRITE only faults its pages in writable and never changes their
            // contents. A kernel without it returns EINVAL, which is ignored.
            unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_POPULATE_WRITE) };
        }
    }
}

/// AVX-512F for the f32 MR×2NR kernel (checked at run time; `ENGRAM_GEMM_AVX512=0` turns it off,
/// for comparing the two kernels on one machine).
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f") && std::env::var_os("ENGRAM_GEMM_AVX512").is_none_or(|v| v != "0")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The MR×2NR tile at (row0, col0) += A panel · [B panel 0 | B panel 1] through the AVX-512
/// kernel, when T is f32 and the tile is full; false (nothing done) otherwise.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_pair_avx512<T: Float>(kc: usize, ap: &[T], bp0: &[T], bp1: &[T], c: &mut [T], ldc: usize, row0: usize, col0: usize, mr: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if mr == MR {
        if let (Some(a32), Some(b0), Some(b1), Some(c32)) = (T::as_f32(ap), T::as_f32(bp0), T::as_f32(bp1), T::as_f32_mut(c)) {
            assert!(a32.len() >= kc * MR && b0.len() >= kc * NR && b1.len() >= kc * NR, "gemm panels too short");
            let base = row0 * ldc + col0;
            assert!(c32.len() >= base + (MR - 1) * ldc + 2 * NR, "gemm tile outside C");
            // SAFETY: only called when `avx512_available()`; panel lengths and the C tile's
            // extent were checked just above.
            unsafe { avx512::kernel_f32_pair_into(kc, a32.as_ptr(), b0.as_ptr(), b1.as_ptr(), c32.as_mut_ptr().add(base), ldc) };
            return true;
        }
    }
    let _ = (kc, ap, bp0, bp1, c, ldc, row0, col0, mr);
    false
}

pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gemm_impl<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool, simd: bool) {
    let bp = pack_b_impl(b, parallel, simd);
    gemm_packed_impl(c, a, &bp, b.cols, parallel, simd, avx512_available());
}

/// B packed once for many products (`gemm_packed`): the panels `gemm` would build on each call.
/// Inference keeps its weights this way (`Tensor::derived`), since they do not change between calls.
pub(crate) fn pack_b<T: Float>(b: MatRef<T>, parallel: bool) -> Vec<T> {
    pack_b_impl(b, parallel, simd_available())
}

/// `c (M, N) += a · B` with B given as `pack_b` made it from a (K, N) matrix, K = `a.cols`.
pub(crate) fn gemm_packed<T: Float>(c: &mut [T], a: MatRef<T>, bp: &[T], n: usize, parallel: bool) {
    assert_eq!(bp.len(), n.div_ceil(NR) * a.cols * NR, "gemm_packed: packed B does not fit (K = {}, N = {n})", a.cols);
    debug_assert_eq!(c.len(), a.rows * n);
    if a.rows == 0 || n == 0 || a.cols == 0 {
        return;
    }
    if parallel {
        prefault(c);
    }
    gemm_packed_impl(c, a, bp, n, parallel, simd_available(), avx512_available());
}

// `simd` picks the x86 transposing packer; other targets have only the plain one.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn pack_b_impl<T: Float>(b: MatRef<T>, parallel: bool, simd: bool) -> Vec<T> {
    let (k, n) = (b.rows, b.cols);
    let n_panels = n.div_ceil(NR);
    // B packed: panel jp holds rows 0..K of columns jp*NR..jp*NR+NR, zero-padded, k-major.
    let mut bp = vec![T::ZERO; n_panels * k * NR];
    let pack_panel = |(jp, dst): (usize, &mut [T])| {
        let j0 = jp * NR;
        let nr = NR.min(n - j0);
        if b.cs == 1 {
            // Row-major B: each k row of the panel is a contiguous run.
            for p in 0..k {
                dst[p * NR..p * NR + nr].copy_from_slice(&b.data[p * b.rs + j0..p * b.rs + j0 + nr]);
            }
        } else if b.rs == 1 {
            // Transposed B (the `x · wᵀ` of every linear): each column is contiguous in k.
            #[cfg(target_arch = "x86_64")]
            if simd && nr == NR {
                if let (Some(src), Some(d32)) = (T::as_f32(b.data), T::as_f32_mut(dst)) {
                    let cols = &src[j0 * b.cs..];
                    assert!(d32.len() >= k * NR && cols.len() >= (NR - 1) * b.cs + k, "gemm B panel out of range");
                    // SAFETY: AVX2 checked (`simd`); the bounds were asserted just above.
                    unsafe { avx2::pack_bt_panel_f32(cols.as_ptr(), b.cs, k, d32.as_mut_ptr()) };
                    return;
                }
            }
            for j in 0..nr {
                let col = &b.data[(j0 + j) * b.cs..(j0 + j) * b.cs + k];
                for (p, &x) in col.iter().enumerate() {
                    dst[p * NR + j] = x;
                }
            }
        } else {
            for p in 0..k {
                for j in 0..nr {
                    dst[p * NR + j] = b.at(p, j0 + j);
                }
            }
        }
    };
    if parallel && n_panels > 1 {
        bp.par_chunks_mut(k * NR).enumerate().for_each(pack_panel);
    } else {
        bp.chunks_mut(k * NR).enumerate().for_each(pack_panel);
    }

    bp
}

fn gemm_packed_impl<T: Float>(c: &mut [T], a: MatRef<T>, bp: &[T], n: usize, parallel: bool, simd: bool, wide512: bool) {
    let (m, k) = (a.rows, a.cols);
    let wide512 = simd && wide512;
    let n_panels = n.div_ceil(NR);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    // Row blocks of at most MC rows, their count a multiple of the thread count so no core idles
    // through the last round (M = 1280 on 2 threads: 8 blocks of 160, not 7 of 192).
    let blocks = m.div_ceil(MC).div_ceil(threads) * threads;
    let mc = m.div_ceil(blocks).div_ceil(MR).max(1) * MR;
    let row_block = |(ci, cblk): (usize, &mut [T])| {
        let i0 = ci * mc;
        let mrows = cblk.len() / n;
        let m_panels = mrows.div_ceil(MR);
        let mut ap = vec![T::ZERO; m_panels * KC * MR];
        // Column blocks of NC keep the C block this task updates (mrows × NC) inside L2; the
        // A block is re-packed per column block, which costs far less than streaming C from L3.
        for jb in (0..n_panels).step_by(NC / NR) {
            let jb_end = (jb + NC / NR).min(n_panels);
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                // A packed: panel ip holds rows ip*MR..ip*MR+MR of columns k0..k0+kc, k-major.
                for ip in 0..m_panels {
                    pack_a(&mut ap[ip * kc * MR..(ip + 1) * kc * MR], a, i0 + ip * MR, MR.min(mrows - ip * MR), k0, kc);
                }
                let mut jp = jb;
                while jp < jb_end {
                    let bpanel = &bp[(jp * k + k0) * NR..(jp * k + k0 + kc) * NR];
                    let nr = NR.min(n - jp * NR);
                    // With AVX-512, two adjacent full panels go through one MR×2NR kernel.
                    if wide512 && jp + 1 < jb_end && (jp + 2) * NR <= n {
                        let bpanel2 = &bp[((jp + 1) * k + k0) * NR..((jp + 1) * k + k0 + kc) * NR];
                        for ip in 0..m_panels {
                            let apanel = &ap[ip * kc * MR..(ip + 1) * kc * MR];
                            let mr = MR.min(mrows - ip * MR);
                            if !tile_pair_avx512::<T>(kc, apanel, bpanel, bpanel2, cblk, n, ip * MR, jp * NR, mr) {
                                tile::<T>(simd, kc, apanel, bpanel, cblk, n, ip * MR, jp * NR, mr, NR);
                                tile::<T>(simd, kc, apanel, bpanel2, cblk, n, ip * MR, (jp + 1) * NR, mr, NR);
                            }
                        }
                        jp += 2;
                        continue;
                    }
                    for ip in 0..m_panels {
                        let apanel = &ap[ip * kc * MR..(ip + 1) * kc * MR];
                        let mr = MR.min(mrows - ip * MR);
                        tile::<T>(simd, kc, apanel, bpanel, cblk, n, ip * MR, jp * NR, mr, nr);
                    }
                    jp += 1;
                }
                k0 += kc;
            }
        }
    };
    if parallel && m > mc {
        c.par_chunks_mut(mc * n).enumerate().for_each(row_block);
    } else {
        c.chunks_mut(mc * n).enumerate().for_each(row_block);
    }
}

/// Packs rows r0..r0+mr, columns k0..k0+kc of A into one MR-tall panel, k-major, zero-padded
/// to MR rows.
#[inline(always)]
fn pack_a<T: Float>(dst: &mut [T], a: MatRef<T>, r0: usize, mr: usize, k0: usize, kc: usize) {
    if mr < MR {
        dst.fill(T::ZERO);
    }
    if a.cs == 1 {
        // Row-major A: read each row's k run contiguously.
        for i in 0..mr {
            let row = &a.data[(r0 + i) * a.rs + k0..(r0 + i) * a.rs + k0 + kc];
            for (p, &x) in row.iter().enumerate() {
                dst[p * MR + i] = x;
            }
        }
    } else if a.rs == 1 {
        // Transposed A (the `dyᵀ · x` of a weight gradient): the MR rows at each k are contiguous.
        for p in 0..kc {
            let col = (k0 + p) * a.cs + r0;
            dst[p * MR..p * MR + mr].copy_from_slice(&a.data[col..col + mr]);
        }
    } else {
        for p in 0..kc {
            for i in 0..mr {
                dst[p * MR + i] = a.at(r0 + i, k0 + p);
            }
        }
    }
}

/// The MR×NR tile of C at (row0, col0) += A panel (kc × MR) · B panel (kc × NR).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Float>(
    simd: bool,
    kc: usize,
    ap: &[T],
    bp: &[T],
    c: &mut [T],
    ldc: usize,
    row0: usize,
    col0: usize,
    mr: usize,
    nr: usize,
) {
    assert!(ap.len() >= kc * MR && bp.len() >= kc * NR, "gemm panels too short");
    #[cfg(target_arch = "x86_64")]
    if simd && mr == MR && nr == NR {
        if let (Some(a32), Some(b32), Some(c32)) = (T::as_f32(ap), T::as_f32(bp), T::as_f32_mut(c)) {
            let base = row0 * ldc + col0;
            assert!(c32.len() >= base + (MR - 1) * ldc + NR, "gemm tile outside C");
            // SAFETY: `simd` was set only when the CPU has AVX2+FMA; panel lengths and the C
            // tile's extent were checked just above.
            unsafe { avx2::kernel_f32_into(kc, a32.as_ptr(), b32.as_ptr(), c32.as_mut_ptr().add(base), ldc) };
            return;
        }
    }
    let mut acc = [[T::ZERO; NR]; MR];
    if simd {
        simd_kernel(kc, ap, bp, &mut acc);
    } else {
        kernel_generic(kc, ap, bp, &mut acc);
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        let dst = &mut c[(row0 + i) * ldc + col0..(row0 + i) * ldc + col0 + nr];
        for (d, s) in dst.iter_mut().zip(row) {
            *d += *s;
        }
    }
}

#[inline(always)]
fn simd_kernel<T: Float>(kc: usize, ap: &[T], bp: &[T], acc: &mut [[T; NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Some(a32), Some(b32), Some(acc32)) = (T::as_f32(ap), T::as_f32(bp), T::tile_as_f32(acc)) {
            // SAFETY: `simd` was set only when the CPU has AVX2+FMA; the panel lengths were
            // checked against kc above.
            unsafe { avx2::kernel_f32(kc, a32.as_ptr(), b32.as_ptr(), acc32) };
        } else {
            // SAFETY: as above.
            unsafe { avx2::kernel_generic(kc, ap, bp, acc) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    kernel_generic(kc, ap, bp, acc);
}

#[inline(always)]
fn kernel_generic<T: Float>(kc: usize, ap: &[T], bp: &[T], acc: &mut [[T; NR]; MR]) {
    for (av, bv) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)).take(kc) {
        let av: &[T; MR] = av.try_into().expect("MR chunk");
        let bv: &[T; NR] = bv.try_into().expect("NR chunk");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = av[i].mul_add(bv[j], acc[i][j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use crate::float::Float;
    use std::arch::x86_64::*;

    /// The generic loop compiled with FMA (used for f64).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_generic<T: Float>(kc: usize, ap: &[T], bp: &[T], acc: &mut [[T; NR]; MR]) {
        super::kernel_generic(kc, ap, bp, acc)
    }

    /// Packs a full NR-wide panel of a transposed B: `src` holds NR rows of length ≥ k, `ld`
    /// apart (rows of the `(out, in)` weight), and `dst[p·NR + j] = src[j·ld + p]`. 8×8 blocks go
    /// through registers (unpack/shuffle/permute transpose), so each load and store is a full
    /// vector instead of one strided scalar store per element; the k % 8 tail is scalar.
    ///
    /// # Safety
    /// AVX2 must be present; `src` must be readable at `j·ld + p` for j < NR, p < k, and `dst`
    /// writable for k·NR floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_bt_panel_f32(src: *const f32, ld: usize, k: usize, dst: *mut f32) {
        let k8 = k / 8 * 8;
        // SAFETY: every offset below is j·ld + p with j < NR, p < k (reads) or p·NR + j (writes).
        unsafe {
            for half in 0..NR / 8 {
                let rows = src.add(half * 8 * ld);
                let mut p = 0;
                while p < k8 {
                    let r = |t: usize| _mm256_loadu_ps(rows.add(t * ld + p));
                    let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
                    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let cols = [
                        _mm256_permute2f128_ps::<0x20>(u0, u4),
                        _mm256_permute2f128_ps::<0x20>(u1, u5),
                        _mm256_permute2f128_ps::<0x20>(u2, u6),
                        _mm256_permute2f128_ps::<0x20>(u3, u7),
                        _mm256_permute2f128_ps::<0x31>(u0, u4),
                        _mm256_permute2f128_ps::<0x31>(u1, u5),
                        _mm256_permute2f128_ps::<0x31>(u2, u6),
                        _mm256_permute2f128_ps::<0x31>(u3, u7),
                    ];
                    for (t, c) in cols.into_iter().enumerate() {
                        _mm256_storeu_ps(dst.add((p + t) * NR + half * 8), c);
                    }
                    p += 8;
                }
                for p in k8..k {
                    for j in 0..8 {
                        *dst.add(p * NR + half * 8 + j) = *rows.add(j * ld + p);
                    }
                }
            }
        }
    }

    /// A full 6×16 f32 tile of C (row stride `ldc`) += A panel · B panel: the same loop as
    /// `kernel_f32`, then C is updated with AVX loads/stores instead of a scalar add per element.
    ///
    /// # Safety
    /// AVX2+FMA must be present; `a` points at kc·MR floats, `b` at kc·NR floats, and `c` at a
    /// tile with MR rows of NR writable floats each, `ldc` apart.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_f32_into(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
        let mut acc = [[0f32; NR]; MR];
        // SAFETY: forwarded caller contract.
        unsafe {
            kernel_f32(kc, a, b, &mut acc);
            for (i, row) in acc.iter().enumerate() {
                let dst = c.add(i * ldc);
                let s0 = _mm256_add_ps(_mm256_loadu_ps(dst), _mm256_loadu_ps(row.as_ptr()));
                let s1 = _mm256_add_ps(_mm256_loadu_ps(dst.add(8)), _mm256_loadu_ps(row.as_ptr().add(8)));
                _mm256_storeu_ps(dst, s0);
                _mm256_storeu_ps(dst.add(8), s1);
            }
        }
    }

    /// 6×16 f32 tile: 12 ymm accumulators, two B vectors and six A broadcasts per k step.
    ///
    /// # Safety
    /// AVX2+FMA must be present; `a` points at kc·MR floats and `b` at kc·NR floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_f32(kc: usize, a: *const f32, b: *const f32, acc: &mut [[f32; NR]; MR]) {
        const _: () = assert!(MR == 6 && NR == 16);
        let z = _mm256_setzero_ps();
        let mut c = [[z; 2]; MR];
        for p in 0..kc {
            // SAFETY: p < kc, so the reads stay inside the panels (caller's contract).
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(p * NR));
                let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
                let ar = a.add(p * MR);
                for (i, ci) in c.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*ar.add(i));
                    ci[0] = _mm256_fmadd_ps(x, b0, ci[0]);
                    ci[1] = _mm256_fmadd_ps(x, b1, ci[1]);
                }
            }
        }
        for (row, ci) in acc.iter_mut().zip(c) {
            // SAFETY: each row holds NR = 16 floats.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), ci[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), ci[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// A full 6×32 f32 tile of C (row stride `ldc`) += A panel · [B panel 0 | B panel 1]: 12 zmm
    /// accumulators, two 16-wide B vectors and six A broadcasts per k step. Every element of C
    /// gets the same FMA chain over k as in the AVX2 6×16 kernel, so the results are identical;
    /// a 512-bit FMA does twice the work per instruction where the core executes it full width.
    ///
    /// # Safety
    /// AVX-512F must be present; `a` points at kc·MR floats, `b0` and `b1` at kc·NR floats each,
    /// and `c` at a tile with MR rows of 2·NR writable floats each, `ldc` apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_f32_pair_into(kc: usize, a: *const f32, b0: *const f32, b1: *const f32, c: *mut f32, ldc: usize) {
        const _: () = assert!(MR == 6 && NR == 16);
        let z = _mm512_setzero_ps();
        let mut acc = [[z; 2]; MR];
        // SAFETY: p < kc keeps every read inside the panels; the stores stay in the C tile
        // (caller's contract).
        unsafe {
            for p in 0..kc {
                let v0 = _mm512_loadu_ps(b0.add(p * NR));
                let v1 = _mm512_loadu_ps(b1.add(p * NR));
                let ar = a.add(p * MR);
                for (i, ci) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ar.add(i));
                    ci[0] = _mm512_fmadd_ps(x, v0, ci[0]);
                    ci[1] = _mm512_fmadd_ps(x, v1, ci[1]);
                }
            }
            for (i, ci) in acc.iter().enumerate() {
                let dst = c.add(i * ldc);
                _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), ci[0]));
                _mm512_storeu_ps(dst.add(NR), _mm512_add_ps(_mm512_loadu_ps(dst.add(NR)), ci[1]));
            }
        }
    }
}

/// Batched `c[b] += op(a[b]) · op(b[b])` over contiguous batches; `a` is (M, K) per batch
/// (stored (K, M) when `ta`), `b` is (K, N) per batch (stored (N, K) when `tb`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bmm<T: Float>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) {
    if batch == 1 {
        gemm(c, MatRef::new(a, m, k, ta), MatRef::new(b, k, n, tb), true);
        return;
    }
    c.par_chunks_mut(m * n).enumerate().for_each(|(i, cb)| {
        let ab = &a[i * m * k..(i + 1) * m * k];
        let bb = &b[i * k * n..(i + 1) * k * n];
        gemm(cb, MatRef::new(ab, m, k, ta), MatRef::new(bb, k, n, tb), false);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef<f64>, b: MatRef<f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|p| a.at(i, p) * b.at(p, j)).sum();
            }
        }
        c
    }

    /// `prefault` on an output over 32 MB keeps every value (an accumulating GEMM's C), and a
    /// fresh zeroed one stays zero; an accumulating GEMM into such a C adds to what was there.
    #[test]
    fn prefault_changes_no_data() {
        let n = (33 << 20) / 4 + 3; // over the threshold, not a whole number of pages
        let mut c: Vec<f32> = (0..n).map(|i| (i % 1009) as f32 - 500.0).collect();
        prefault(&mut c);
        assert!(c.iter().enumerate().all(|(i, &v)| v == (i % 1009) as f32 - 500.0));
        let mut z = vec![0f32; n];
        prefault(&mut z);
        assert!(z.iter().all(|&v| v == 0.0));
        // C (2,900,000 × 3) += A (2,900,000 × 1) · B (1 × 3), through the parallel entry.
        let (m, k, nn) = (2_900_000, 1, 3);
        let a: Vec<f32> = (0..m).map(|i| (i % 7) as f32).collect();
        let b = [1.0f32, 2.0, 3.0];
        let mut c: Vec<f32> = (0..m * nn).map(|i| (i % 5) as f32).collect();
        gemm(&mut c, MatRef::new(&a, m, k, false), MatRef::new(&b, k, nn, false), true);
        assert!(c.iter().enumerate().all(|(i, &v)| v == (i % 5) as f32 + ((i / nn) % 7) as f32 * b[i % nn]));
    }

    #[test]
    fn gemm_matches_naive_at_awkward_shapes_and_transposes() {
        let mut rng = crate::util::Rng::new(7);
        for &(m, k, n) in &[(1, 1, 1), (1, 7, 3), (5, 300, 17), (67, 9, 33), (130, 513, 15), (4, 16, 64)] {
            for &(ta, tb) in &[(false, false), (false, true), (true, false), (true, true)] {
                let a = rng.normal_vec(m * k);
                let b = rng.normal_vec(k * n);
                let init = rng.normal_vec(m * n);
                let mut c = init.clone();
                gemm(&mut c, MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb), true);
                let want = naive(MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb));
                for i in 0..m * n {
                    let w = want[i] + init[i];
                    assert!((c[i] - w).abs() <= 1e-12 * (1.0 + w.abs()), "({m},{k},{n}) ta={ta} tb={tb} [{i}]: {} vs {w}", c[i]);
                }
            }
        }
    }

    /// The AVX-512 6×32 kernel and the AVX2 6×16 kernel run the same FMA chain per element of C:
    /// identical results, at shapes with pairs of full panels, a lone panel and ragged edges.
    #[test]
    fn avx512_pair_kernel_is_bit_identical_to_avx2() {
        if !(simd_available() && avx512_available()) {
            eprintln!("skipped: this CPU has no AVX-512F (or ENGRAM_GEMM_AVX512=0), so only the AVX2 kernel runs");
            return;
        }
        let mut rng = crate::util::Rng::new(12);
        for &(m, k, n) in &[(13, 513, 33), (64, 64, 64), (100, 31, 48), (200, 384, 1536)] {
            for &(ta, tb) in &[(false, false), (false, true), (true, false)] {
                let a: Vec<f32> = rng.normal_vec(m * k).into_iter().map(|x| x as f32).collect();
                let b: Vec<f32> = rng.normal_vec(k * n).into_iter().map(|x| x as f32).collect();
                let (am, bm) = (MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb));
                let bp = pack_b_impl(bm, true, true);
                let (mut c1, mut c2) = (vec![0.25f32; m * n], vec![0.25f32; m * n]);
                gemm_packed_impl(&mut c1, am, &bp, n, true, true, false);
                gemm_packed_impl(&mut c2, am, &bp, n, true, true, true);
                assert!(c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()), "({m},{k},{n}) ta={ta} tb={tb}");
            }
        }
    }

    #[test]
    fn f32_simd_tile_matches_f64_reference() {
        let mut rng = crate::util::Rng::new(11);
        for &(m, k, n) in &[(1, 1, 1), (7, 300, 17), (13, 513, 33), (64, 64, 64), (100, 31, 48)] {
            for &(ta, tb) in &[(false, false), (false, true), (true, false)] {
                let a = rng.normal_vec(m * k);
                let b = rng.normal_vec(k * n);
                let want = naive(MatRef::new(&a, m, k, ta), MatRef::new(&b, k, n, tb));
                let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let mut c = vec![0.5f32; m * n];
                gemm(&mut c, MatRef::new(&a32, m, k, ta), MatRef::new(&b32, k, n, tb), true);
                for i in 0..m * n {
                    let w = want[i] + 0.5;
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                    assert!((c[i] as f64 - w).abs() <= tol, "({m},{k},{n}) [{i}]: {} vs {w}", c[i]);
                }
            }
        }
    }
}

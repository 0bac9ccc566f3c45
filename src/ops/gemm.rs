//! The CPU GEMM every matmul-shaped op runs on: `C (M, N) += op(A) (M, K) · op(B) (K, N)`.
//!
//! Cache-blocked after the BLIS/GotoBLAS scheme: B is packed once into NR-wide column panels
//! (k-major), each rayon task owns MC rows of C and packs its A block into MR-tall row panels
//! per KC slice, and an MR×NR register-tiled micro-kernel does the FLOPs with the B panel in L1
//! and the A block in L2. Packing makes transposes free: op(A)/op(B) are read through strides.
//! On x86-64 with AVX2+FMA (checked at run time) the same code is compiled a second time with
//! those features and fused multiply-adds; a SIMD intrinsics micro-kernel can slot in beside it.

use rayon::prelude::*;

use crate::float::Float;

const MR: usize = 4;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 64;

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

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c (M, N row-major) += a · b`. `parallel` splits the rows of C over rayon tasks.
pub(crate) fn gemm<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert_eq!(b.rows, k);
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { gemm_avx2(c, a, b, parallel) };
            return;
        }
    }
    gemm_impl::<T, false>(c, a, b, parallel);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool) {
    gemm_impl::<T, true>(c, a, b, parallel)
}

#[inline(always)]
fn gemm_impl<T: Float, const FMA: bool>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let n_panels = n.div_ceil(NR);
    // B packed: panel jp holds rows 0..K of columns jp*NR..jp*NR+NR, zero-padded, k-major.
    let mut bp = vec![T::ZERO; n_panels * k * NR];
    let pack_panel = |(jp, dst): (usize, &mut [T])| {
        let j0 = jp * NR;
        let nr = NR.min(n - j0);
        for p in 0..k {
            let row = &mut dst[p * NR..p * NR + nr];
            for (j, x) in row.iter_mut().enumerate() {
                *x = b.at(p, j0 + j);
            }
        }
    };
    if parallel && n_panels > 1 {
        bp.par_chunks_mut(k * NR).enumerate().for_each(pack_panel);
    } else {
        bp.chunks_mut(k * NR).enumerate().for_each(pack_panel);
    }

    let row_block = |(ci, cblk): (usize, &mut [T])| {
        let i0 = ci * MC;
        let mrows = cblk.len() / n;
        let m_panels = mrows.div_ceil(MR);
        let mut ap = vec![T::ZERO; m_panels * KC * MR];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            // A packed: panel ip holds rows ip*MR..ip*MR+MR of columns k0..k0+kc, k-major.
            for ip in 0..m_panels {
                let dst = &mut ap[ip * kc * MR..(ip + 1) * kc * MR];
                let mr = MR.min(mrows - ip * MR);
                for p in 0..kc {
                    for i in 0..MR {
                        dst[p * MR + i] = if i < mr { a.at(i0 + ip * MR + i, k0 + p) } else { T::ZERO };
                    }
                }
            }
            for jp in 0..n_panels {
                let bpanel = &bp[(jp * k + k0) * NR..(jp * k + k0 + kc) * NR];
                let nr = NR.min(n - jp * NR);
                for ip in 0..m_panels {
                    let apanel = &ap[ip * kc * MR..(ip + 1) * kc * MR];
                    let mr = MR.min(mrows - ip * MR);
                    micro_kernel::<T, FMA>(kc, apanel, bpanel, cblk, n, ip * MR, jp * NR, mr, nr);
                }
            }
            k0 += kc;
        }
    };
    if parallel && m > MC {
        c.par_chunks_mut(MC * n).enumerate().for_each(row_block);
    } else {
        c.chunks_mut(MC * n).enumerate().for_each(row_block);
    }
}

/// The MR×NR tile of C at (row0, col0) += A panel (kc × MR) · B panel (kc × NR).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn micro_kernel<T: Float, const FMA: bool>(
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
    let mut acc = [[T::ZERO; NR]; MR];
    for (av, bv) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)).take(kc) {
        let av: &[T; MR] = av.try_into().expect("MR chunk");
        let bv: &[T; NR] = bv.try_into().expect("NR chunk");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = if FMA { av[i].mul_add(bv[j], acc[i][j]) } else { acc[i][j] + av[i] * bv[j] };
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        let dst = &mut c[(row0 + i) * ldc + col0..(row0 + i) * ldc + col0 + nr];
        for (d, s) in dst.iter_mut().zip(row) {
            *d += *s;
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

    #[test]
    fn gemm_matches_naive_at_awkward_shapes_and_transposes() {
        let mut rng = crate::testing::Rng::new(7);
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
}

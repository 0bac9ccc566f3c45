//! Reduction helpers shared by backward kernels.

use rayon::prelude::*;

use crate::float::Float;

/// `acc[j] += Σ_r x[r * C + j]` for `x` of `R` rows of `C = acc.len()` columns.
pub(crate) fn sum_rows<T: Float>(acc: &mut [T], x: &[T]) {
    let c = acc.len();
    if c == 0 {
        return;
    }
    let rows = x.len() / c;
    let chunk = 256usize;
    if rows <= chunk {
        for r in x.chunks_exact(c) {
            acc.iter_mut().zip(r).for_each(|(a, v)| *a += *v);
        }
        return;
    }
    let partial = x
        .par_chunks(chunk * c)
        .map(|blk| {
            let mut s = vec![T::ZERO; c];
            for r in blk.chunks_exact(c) {
                s.iter_mut().zip(r).for_each(|(a, v)| *a += *v);
            }
            s
        })
        .collect::<Vec<_>>();
    for s in partial {
        acc.iter_mut().zip(&s).for_each(|(a, v)| *a += *v);
    }
}

/// Fold `row` with `f` in 8 interleaved lanes, then the lanes in order, then the tail.
#[inline(always)]
pub(crate) fn lanes<T: Float>(row: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    const L: usize = 8;
    let mut acc = [init; L];
    let chunks = row.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..L {
            acc[l] = f(acc[l], c[l]);
        }
    }
    let lanes = acc.into_iter().fold(init, &f);
    tail.iter().copied().fold(lanes, f)
}

/// `Σ row` in the fixed 8-lane order of [`lanes`] (vectorisable, the same in every build).
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(row: &[T]) -> T {
    lanes(row, T::ZERO, |a, b| a + b)
}

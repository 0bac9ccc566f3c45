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

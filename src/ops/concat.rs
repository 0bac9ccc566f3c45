//! `concat` and `narrow` along any axis — the adjoint pair the recurrent memory uses to splice
//! memory states into a segment's embeddings and read them back out.
//!
//! Both are band copies: a tensor viewed as `(outer, dim·inner)` rows, with a band of
//! `len·inner` columns moved per row (kernels/concat.cu, `copy_band`).

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `(outer, inner)` of `shape` around `axis`.
fn split(shape: &[usize], axis: usize) -> (usize, usize) {
    (shape[..axis].iter().product(), shape[axis + 1..].iter().product())
}

/// One band copy on the host: `dst[r, dst_off..][..len] (+)= src[r, src_off..][..len]`.
struct Band {
    outer: usize,
    dst_cols: usize,
    dst_off: usize,
    src_cols: usize,
    src_off: usize,
    len: usize,
}

impl Band {
    fn run<T: Float>(&self, dst: &mut [T], src: &[T], acc: bool) {
        if self.len == 0 || self.outer == 0 {
            return;
        }
        dst.par_chunks_mut(self.dst_cols).zip(src.par_chunks(self.src_cols)).take(self.outer).for_each(|(d, s)| {
            let (d, s) = (&mut d[self.dst_off..][..self.len], &s[self.src_off..][..self.len]);
            if acc {
                d.iter_mut().zip(s).for_each(|(a, b)| *a += *b);
            } else {
                d.copy_from_slice(s);
            }
        });
    }
}

/// Join tensors along `axis` — `torch.cat(parts, dim=axis)`. Every other dimension must agree.
pub fn concat(tape: &Tape, parts: &[&Tensor], axis: usize) -> Result<Tensor> {
    const OP: &str = "concat";
    let Some(first) = parts.first() else { return shape_err(OP, "needs at least one tensor") };
    let rank = first.rank();
    if axis >= rank {
        return shape_err(OP, format!("axis {axis} out of range for {:?}", first.shape()));
    }
    for p in parts {
        let ok = p.rank() == rank && (0..rank).all(|d| d == axis || p.shape()[d] == first.shape()[d]);
        if !ok || p.dtype() != first.dtype() || p.device() != first.device() {
            let all: Vec<_> = parts.iter().map(|p| format!("{:?} {:?}", p.shape(), p.dtype())).collect();
            return shape_err(OP, format!("parts disagree off axis {axis} (or in dtype/device): {}", all.join(", ")));
        }
    }
    let dims: Vec<usize> = parts.iter().map(|p| p.shape()[axis]).collect();
    let total: usize = dims.iter().sum();
    let mut shape = first.shape().to_vec();
    shape[axis] = total;
    let (outer, inner) = split(&shape, axis);
    let bands: Vec<Band> = dims
        .iter()
        .scan(0, |off, &d| {
            let b = Band { outer, dst_cols: total * inner, dst_off: *off * inner, src_cols: d * inner, src_off: 0, len: d * inner };
            *off += d;
            Some(b)
        })
        .collect();
    #[cfg(feature = "cuda")]
    if first.is_cuda() {
        return cuda::concat(tape, parts, bands, shape);
    }
    with_float!(OP, first.dtype(), T => {
        let mut out = vec![T::ZERO; shape.iter().product()];
        for (p, band) in parts.iter().zip(&bands) {
            band.run(&mut out, p.data::<T>(OP)?, false);
        }
        Ok(tape.record(OP, parts, T::wrap(out), shape, |_| ConcatBwd::<T> { bands, _t: Default::default() }))
    })
}

struct ConcatBwd<T> {
    /// The forward band of each part (dst = output).
    bands: Vec<Band>,
    _t: std::marker::PhantomData<T>,
}

/// The band reversed: read from the output's columns, write the part's.
fn reverse(b: &Band) -> Band {
    Band { outer: b.outer, dst_cols: b.src_cols, dst_off: b.src_off, src_cols: b.dst_cols, src_off: b.dst_off, len: b.len }
}

impl<T: Float> Backward for ConcatBwd<T> {
    // d part_i += dout[band_i]
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let dy = T::slice(dout).expect("dout dtype");
        for (p, b) in inputs.iter().zip(&self.bands) {
            sink.accumulate::<T>(p, |dx| reverse(b).run(dx, dy, true))?;
        }
        Ok(())
    }
}

/// `len` entries of `axis` starting at `start` — `torch.narrow(x, axis, start, len)` (a copy).
pub fn narrow(tape: &Tape, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    const OP: &str = "narrow";
    if axis >= x.rank() || start + len > x.shape()[axis] {
        return shape_err(OP, format!("[{start}, {}) on axis {axis} of {:?}", start + len, x.shape()));
    }
    let mut shape = x.shape().to_vec();
    let dim = shape[axis];
    shape[axis] = len;
    let (outer, inner) = split(&shape, axis);
    let band = Band { outer, dst_cols: len * inner, dst_off: 0, src_cols: dim * inner, src_off: start * inner, len: len * inner };
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::narrow(tape, x, band, shape);
    }
    with_float!(OP, x.dtype(), T => {
        let mut out = vec![T::ZERO; shape.iter().product()];
        band.run(&mut out, x.data::<T>(OP)?, false);
        Ok(tape.record(OP, &[x], T::wrap(out), shape, |_| NarrowBwd::<T> { band, _t: Default::default() }))
    })
}

struct NarrowBwd<T> {
    band: Band,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for NarrowBwd<T> {
    // dx[band] += dout; the rest of dx gets nothing.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let dy = T::slice(dout).expect("dout dtype");
        sink.accumulate::<T>(&inputs[0], |dx| reverse(&self.band).run(dx, dy, true))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path: kernels/concat.cu `copy_band_v1` for both ops and both directions.
    use cudarc::driver::CudaSlice;

    use super::{reverse, Band};
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    fn copy(dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, b: &Band, acc: bool) -> Result<()> {
        if b.len == 0 || b.outer == 0 {
            return Ok(());
        }
        let dev = CudaDev::get()?;
        let outer = b.outer as i64;
        let a = [b.dst_cols as i32, b.dst_off as i32, b.src_cols as i32, b.src_off as i32, b.len as i32, acc as i32];
        launch!(dev, "concat", "copy_band_v1", cfg_1d(b.outer * b.len); dst, src, &outer, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5])
    }

    pub(super) fn concat(tape: &Tape, parts: &[&Tensor], bands: Vec<Band>, shape: Vec<usize>) -> Result<Tensor> {
        let mut y = CudaDev::get()?.alloc::<f32>(shape.iter().product())?;
        for (p, b) in parts.iter().zip(&bands) {
            copy(&mut y, p.cuda_f32("concat")?, b, false)?;
        }
        Ok(tape.record("concat", parts, wrap(y), shape, |_| ConcatBwd { bands }))
    }

    struct ConcatBwd {
        bands: Vec<Band>,
    }

    impl Backward for ConcatBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dy = dout_f32(dout, "concat")?;
            for (p, b) in inputs.iter().zip(&self.bands) {
                sink.accumulate_cuda(p, |dx| copy(dx, dy, &reverse(b), true))?;
            }
            Ok(())
        }
    }

    pub(super) fn narrow(tape: &Tape, x: &Tensor, band: Band, shape: Vec<usize>) -> Result<Tensor> {
        let mut y = CudaDev::get()?.alloc::<f32>(shape.iter().product())?;
        copy(&mut y, x.cuda_f32("narrow")?, &band, false)?;
        Ok(tape.record("narrow", &[x], wrap(y), shape, |_| NarrowBwd { band }))
    }

    struct NarrowBwd {
        band: Band,
    }

    impl Backward for NarrowBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dy = dout_f32(dout, "narrow")?;
            sink.accumulate_cuda(&inputs[0], |dx| copy(dx, dy, &reverse(&self.band), true))
        }
    }
}

//! Layout ops: `reshape` (a view, no copy) and the attention head split/merge (permutes).

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// The same elements under another shape of equal size — `torch.reshape`. Shares storage.
pub fn reshape(tape: &Tape, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if shape.iter().product::<usize>() != x.numel() {
        return shape_err("reshape", format!("cannot view {:?} ({} elements) as {shape:?}", x.shape(), x.numel()));
    }
    let tracked = tape.tracks(&[x]);
    let out = x.with_shape(shape.to_vec(), tracked);
    if tracked {
        tape.push("reshape", &[x], &out, Box::new(ReshapeBwd));
    }
    Ok(out)
}

struct ReshapeBwd;

impl Backward for ReshapeBwd {
    // Same row-major layout: the gradient passes through unchanged.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        sink.add_buf(&inputs[0], dout)
    }
}

/// `(B, T, NH·HS) → (B, NH, T, HS)` — `x.view(B, T, NH, HS).permute(0, 2, 1, 3)`.
pub fn split_heads(tape: &Tape, x: &Tensor, nh: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 3 || nh == 0 || !s[2].is_multiple_of(nh) {
        return shape_err("split_heads", format!("need (B, T, C) with C divisible by {nh} heads, got {s:?}"));
    }
    let (b, t, hs) = (s[0], s[1], s[2] / nh);
    permute_op(tape, "split_heads", x, [b, t, nh, hs], vec![b, nh, t, hs])
}

/// `(B, NH, T, HS) → (B, T, NH·HS)` — `x.permute(0, 2, 1, 3).reshape(B, T, NH·HS)`.
pub fn merge_heads(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 {
        return shape_err("merge_heads", format!("need (B, NH, T, HS), got {s:?}"));
    }
    let (b, nh, t, hs) = (s[0], s[1], s[2], s[3]);
    permute_op(tape, "merge_heads", x, [b, nh, t, hs], vec![b, t, nh * hs])
}

/// `x[:, t, :]`: `(B, T, C) → (B, C)` — the [CLS] state BERT's pooler reads (`x[:, 0]`).
pub fn token(tape: &Tape, x: &Tensor, t: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 3 || t >= s[1] {
        return shape_err("token", format!("need (B, T, C) with T > {t}, got {s:?}"));
    }
    let (b, tt, c) = (s[0], s[1], s[2]);
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::token(tape, x, [b, tt, c], t);
    }
    with_float!("token", x.dtype(), T => {
        let xd = x.data::<T>("token")?;
        let y: Vec<T> = (0..b).flat_map(|bi| xd[(bi * tt + t) * c..][..c].iter().copied()).collect();
        Ok(tape.record("token", &[x], T::wrap(y), vec![b, c], |_| TokenBwd::<T> { dims: [b, tt, c], t, _t: Default::default() }))
    })
}

struct TokenBwd<T> {
    dims: [usize; 3],
    t: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for TokenBwd<T> {
    // dx[:, t, :] += dy; every other position gets nothing.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let dy = T::slice(dout).expect("dout dtype");
        let [b, tt, c] = self.dims;
        sink.accumulate::<T>(&inputs[0], |dx| {
            for bi in 0..b {
                dx[(bi * tt + self.t) * c..][..c].iter_mut().zip(&dy[bi * c..][..c]).for_each(|(d, g)| *d += *g);
            }
        })
    }
}

/// Swap the middle two axes of a 4-d layout `dims = (A, P, Q, D)` → `(A, Q, P, D)`.
fn swap12<T: Float>(src: &[T], dst: &mut [T], dims: [usize; 4], accumulate: bool) {
    let [_, p, q, d] = dims;
    dst.par_chunks_mut(p * q * d).zip(src.par_chunks(p * q * d)).for_each(|(db, sb)| {
        for i in 0..p {
            for j in 0..q {
                let s = &sb[(i * q + j) * d..][..d];
                let t = &mut db[(j * p + i) * d..][..d];
                if accumulate {
                    t.iter_mut().zip(s).for_each(|(a, v)| *a += *v);
                } else {
                    t.copy_from_slice(s);
                }
            }
        }
    });
}

fn permute_op(tape: &Tape, op: &'static str, x: &Tensor, dims: [usize; 4], out_shape: Vec<usize>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::permute_op(tape, op, x, dims, out_shape);
    }
    with_float!(op, x.dtype(), T => {
        let mut y = vec![T::ZERO; x.numel()];
        swap12(x.data::<T>(op)?, &mut y, dims, false);
        Ok(tape.record(op, &[x], T::wrap(y), out_shape, |_| PermuteBwd::<T> { dims, _t: Default::default() }))
    })
}

struct PermuteBwd<T> {
    dims: [usize; 4],
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for PermuteBwd<T> {
    // The inverse permutation swaps the same two axes back.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let [a, p, q, d] = self.dims;
        let dy = T::slice(dout).expect("dout dtype");
        sink.accumulate::<T>(&inputs[0], |dx| swap12(dy, dx, [a, q, p, d], true))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/shape.cu): one swap-middle-axes kernel serves split, merge and both backwards.
    use cudarc::driver::CudaSlice;

    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    fn swap12(out: &mut CudaSlice<f32>, input: &CudaSlice<f32>, [a, p, q, d]: [usize; 4], acc: bool) -> Result<()> {
        let dev = CudaDev::get()?;
        let (ai, pi, qi, di, acci) = (a as i32, p as i32, q as i32, d as i32, acc as i32);
        launch!(dev, "shape", "swap12_v1", cfg_1d(a * p * q * d); out, input, &ai, &pi, &qi, &di, &acci)
    }

    pub(super) fn token(tape: &Tape, x: &Tensor, [b, t, c]: [usize; 3], at: usize) -> Result<Tensor> {
        let dev = CudaDev::get()?;
        let dims = [b as i32, t as i32, c as i32, at as i32];
        let mut y = dev.alloc::<f32>(b * c)?;
        launch!(dev, "shape", "token_fwd_v1", cfg_1d(b * c); &mut y, x.cuda_f32("token")?, &dims[0], &dims[1], &dims[2], &dims[3])?;
        Ok(tape.record("token", &[x], wrap(y), vec![b, c], |_| TokenBwd { dims }))
    }

    struct TokenBwd {
        dims: [i32; 4],
    }

    impl Backward for TokenBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let dy = dout_f32(dout, "token")?;
            let d = &self.dims;
            let n = (d[0] * d[2]) as usize;
            sink.accumulate_cuda(&inputs[0], |dx| launch!(dev, "shape", "token_bwd_v1", cfg_1d(n); dx, dy, &d[0], &d[1], &d[2], &d[3]))
        }
    }

    pub(super) fn permute_op(tape: &Tape, op: &'static str, x: &Tensor, dims: [usize; 4], out_shape: Vec<usize>) -> Result<Tensor> {
        let mut y = CudaDev::get()?.alloc::<f32>(x.numel())?;
        swap12(&mut y, x.cuda_f32(op)?, dims, false)?;
        Ok(tape.record(op, &[x], wrap(y), out_shape, |_| PermuteBwd { op, dims }))
    }

    struct PermuteBwd {
        op: &'static str,
        dims: [usize; 4],
    }

    impl Backward for PermuteBwd {
        // The inverse swap of (A, Q, P, D), accumulated.
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dy = dout_f32(dout, self.op)?;
            let [a, p, q, d] = self.dims;
            sink.accumulate_cuda(&inputs[0], |dx| swap12(dx, dy, [a, q, p, d], true))
        }
    }
}

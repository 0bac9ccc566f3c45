//! Elementwise ops: `add`, `bias_add`, `scale`, and the `unary` helper the activations use.

use rayon::prelude::*;

use super::{last_dim, same_dtype};
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

const PAR_MIN: usize = 1 << 14;

/// Elements per rayon task in the pointwise loops: big enough to amortise the task, small enough
/// to split a BERT activation over every core.
pub(crate) const CHUNK: usize = 1 << 12;

/// Call `f` from a function compiled with AVX2+FMA — and AVX-512F where the CPU has it (the
/// GEMM's `ENGRAM_GEMM_AVX512=0` turns that off too) — when the CPU has them (checked at run
/// time), so the loop in `f`, inlined there, vectorises 256 or 512 bits wide; otherwise call it as
/// is. The same operations run either way. Call it inside each rayon task: closures do not inherit
/// `#[target_feature]`.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::simd_available() {
        if super::gemm::avx512_available() {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn run512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
            return unsafe { run512(f) };
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { run(f) };
    }
    f()
}

/// `y[i] = f(x[i])` in parallel chunks for large tensors. Each chunk is a plain indexed loop, so a
/// branch-free `f` (the f32 GELU) is inlined and vectorised.
pub(crate) fn map<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    let body = |(yc, xc): (&mut [T], &[T])| {
        wide(#[inline(always)] || {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = f(v);
            }
        })
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(body);
    } else {
        body((&mut y, x));
    }
    y
}

/// `a + b` for equal shapes — `torch.add`.
pub fn add(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return shape_err("add", format!("{:?} + {:?}", a.shape(), b.shape()));
    }
    #[cfg(feature = "cuda")]
    if a.is_cuda() || b.is_cuda() {
        return cuda::add(tape, a, b);
    }
    with_float!("add", same_dtype("add", a, b)?, T => {
        let (x, y) = (a.data::<T>("add")?, b.data::<T>("add")?);
        let out: Vec<T> = x.iter().zip(y).map(|(p, q)| *p + *q).collect();
        Ok(tape.record("add", &[a, b], T::wrap(out), a.shape().to_vec(), |_| AddBwd::<T>(Default::default())))
    })
}

struct AddBwd<T>(std::marker::PhantomData<T>);

impl<T: Float> Backward for AddBwd<T> {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        sink.add_buf(&inputs[0], dout)?;
        sink.add_buf(&inputs[1], dout)
    }
}

/// `x + b` with `b (C)` broadcast over the rows of `x (…, C)`.
pub fn bias_add(tape: &Tape, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = last_dim("bias_add", x)?;
    if b.shape() != [c] {
        return shape_err("bias_add", format!("bias {:?} does not fit x {:?}", b.shape(), x.shape()));
    }
    #[cfg(feature = "cuda")]
    if x.is_cuda() || b.is_cuda() {
        return cuda::bias_add(tape, x, b, c);
    }
    with_float!("bias_add", same_dtype("bias_add", x, b)?, T => {
        let bd = b.data::<T>("bias_add")?;
        let mut out = x.data::<T>("bias_add")?.to_vec();
        out.chunks_mut(c).for_each(|r| r.iter_mut().zip(bd).for_each(|(v, q)| *v += *q));
        Ok(tape.record("bias_add", &[x, b], T::wrap(out), x.shape().to_vec(), |_| BiasAddBwd::<T>(Default::default())))
    })
}

struct BiasAddBwd<T>(std::marker::PhantomData<T>);

impl<T: Float> Backward for BiasAddBwd<T> {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        sink.add_buf(&inputs[0], dout)?;
        let dy = T::slice(dout).expect("dout dtype");
        sink.accumulate::<T>(&inputs[1], |db| super::reduce::sum_rows(db, dy))
    }
}

/// `s · x` for a constant `s` — `torch.mul(x, s)`.
pub fn scale(tape: &Tape, x: &Tensor, s: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::scale(tape, x, s);
    }
    with_float!("scale", x.dtype(), T => {
        let st = T::from_f64(s);
        let out = map(x.data::<T>("scale")?, |v| v * st);
        Ok(tape.record("scale", &[x], T::wrap(out), x.shape().to_vec(), |_| ScaleBwd::<T>(st)))
    })
}

struct ScaleBwd<T>(T);

impl<T: Float> Backward for ScaleBwd<T> {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let dy = T::slice(dout).expect("dout dtype");
        sink.accumulate::<T>(&inputs[0], |dx| dx.iter_mut().zip(dy).for_each(|(d, g)| *d += *g * self.0))
    }
}

/// A pointwise op `y = f(x)` with derivative `df(x)`; the activations are built on it. Backward
/// needs only the input, which the node holds anyway, so nothing extra is saved.
pub(crate) fn unary<T, F, D>(tape: &Tape, op: &'static str, x: &Tensor, f: F, df: D) -> Result<Tensor>
where
    T: Float,
    F: Fn(T) -> T + Sync,
    D: Fn(T) -> T + Copy + Send + Sync + 'static,
{
    let y = map(x.data::<T>(op)?, f);
    Ok(tape.record(op, &[x], T::wrap(y), x.shape().to_vec(), |_| UnaryBwd::<T, D> { op, df, _t: Default::default() }))
}

struct UnaryBwd<T, D> {
    op: &'static str,
    df: D,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float, D: Fn(T) -> T + Copy + Send + Sync + 'static> Backward for UnaryBwd<T, D> {
    // dx += dy · f'(x), made as a fresh buffer (it becomes the gradient slot when there is none).
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        if !sink.wants(&inputs[0]) {
            return Ok(());
        }
        let x = inputs[0].data::<T>(self.op)?;
        let dy = T::slice(dout).expect("dout dtype");
        let df = self.df;
        let mut dx = vec![T::ZERO; x.len()];
        let body = |((dc, gc), xc): ((&mut [T], &[T]), &[T])| {
            wide(#[inline(always)] || {
                for ((d, &g), &xi) in dc.iter_mut().zip(gc).zip(xc) {
                    *d = g * df(xi);
                }
            })
        };
        if dx.len() >= PAR_MIN {
            dx.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK)).zip(x.par_chunks(CHUNK)).for_each(body)
        } else {
            body(((&mut dx, dy), x))
        }
        sink.add_owned(&inputs[0], T::wrap(dx))
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! CUDA paths (kernels/elementwise.cu, gelu.cu, tanh.cu).
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, check_cuda, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    pub fn add(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_cuda("add", &[a, b])?;
        let dev = CudaDev::get()?;
        let n = a.numel() as i64;
        let mut y = dev.alloc::<f32>(a.numel())?;
        launch!(dev, "elementwise", "add_fwd_v1", cfg_1d(a.numel()); &mut y, a.cuda_f32("add")?, b.cuda_f32("add")?, &n)?;
        Ok(tape.record("add", &[a, b], wrap(y), a.shape().to_vec(), |_| super::AddBwd::<f32>(Default::default())))
    }

    pub fn bias_add(tape: &Tape, x: &Tensor, b: &Tensor, c: usize) -> Result<Tensor> {
        check_cuda("bias_add", &[x, b])?;
        let dev = CudaDev::get()?;
        let (rows, ci) = ((x.numel() / c) as i64, c as i32);
        let mut y = dev.alloc::<f32>(x.numel())?;
        launch!(dev, "elementwise", "bias_add_fwd_v1", cfg_1d(x.numel()); &mut y, x.cuda_f32("bias_add")?, b.cuda_f32("bias_add")?, &rows, &ci)?;
        Ok(tape.record("bias_add", &[x, b], wrap(y), x.shape().to_vec(), |_| BiasAddBwd { c }))
    }

    struct BiasAddBwd {
        c: usize,
    }

    impl Backward for BiasAddBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            sink.add_buf(&inputs[0], dout)?;
            let dy = dout_f32(dout, "bias_add")?;
            let (rows, c) = ((inputs[0].numel() / self.c) as i64, self.c as i32);
            sink.accumulate_cuda(&inputs[1], |db| sum_rows(db, dy, rows, c))
        }
    }

    /// db (c) += Σ_rows dy (rows, c).
    pub fn sum_rows(db: &mut cudarc::driver::CudaSlice<f32>, dy: &cudarc::driver::CudaSlice<f32>, rows: i64, c: i32) -> Result<()> {
        let dev = CudaDev::get()?;
        launch!(dev, "elementwise", "sum_rows_v1", cfg_1d(c as usize); db, dy, &rows, &c)
    }

    pub fn scale(tape: &Tape, x: &Tensor, s: f64) -> Result<Tensor> {
        let dev = CudaDev::get()?;
        let (n, sf) = (x.numel() as i64, s as f32);
        let mut y = dev.alloc::<f32>(x.numel())?;
        launch!(dev, "elementwise", "scale_fwd_v1", cfg_1d(x.numel()); &mut y, x.cuda_f32("scale")?, &sf, &n)?;
        Ok(tape.record("scale", &[x], wrap(y), x.shape().to_vec(), |_| ScaleBwd(sf)))
    }

    struct ScaleBwd(f32);

    impl Backward for ScaleBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dy = dout_f32(dout, "scale")?;
            sink.accumulate_cuda(&inputs[0], |dx| crate::device::cuda::axpy(dx, dy, self.0))
        }
    }

    /// A pointwise op with kernels `<op>_fwd_v1(y, x, n)` and `<op>_bwd_v1(dx, dy, x, n)` in
    /// kernels/<module>.cu.
    pub fn unary(tape: &Tape, op: &'static str, module: &'static str, fwd: &'static str, bwd: &'static str, x: &Tensor) -> Result<Tensor> {
        let dev = CudaDev::get()?;
        let n = x.numel() as i64;
        let mut y = dev.alloc::<f32>(x.numel())?;
        launch!(dev, module, fwd, cfg_1d(x.numel()); &mut y, x.cuda_f32(op)?, &n)?;
        Ok(tape.record(op, &[x], wrap(y), x.shape().to_vec(), |_| UnaryBwd { op, module, bwd }))
    }

    struct UnaryBwd {
        op: &'static str,
        module: &'static str,
        bwd: &'static str,
    }

    impl Backward for UnaryBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let dy = dout_f32(dout, self.op)?;
            let x = inputs[0].cuda_f32(self.op)?;
            let n = inputs[0].numel() as i64;
            sink.accumulate_cuda(&inputs[0], |dx| launch!(dev, self.module, self.bwd, cfg_1d(n as usize); dx, dy, x, &n))
        }
    }
}

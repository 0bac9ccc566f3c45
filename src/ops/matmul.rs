//! Batched matrix products: `matmul` (`a @ b`), `matmul_nt` (`a @ bᵀ`), and `linear`
//! (`x @ wᵀ + b`, HF/PyTorch `(out, in)` weight layout), all on the packed CPU GEMM.

use super::gemm::{bmm, gemm_packed, pack_b, MatRef};
use super::gemm_bf16::{gemm_autocast, gemm_weight, pack_weight};
use super::same_dtype;
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// Shapes of a batched product: (batch, M, K, N), with `b_broadcast` when `b` is one matrix
/// shared by every batch (then the batch folds into M).
struct Dims {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    out_shape: Vec<usize>,
}

/// `a (…, M, K)` with `b (…, K, N)` (`nt = false`) or `b (…, N, K)` (`nt = true`); `b` may also
/// be a single matrix, which broadcasts over `a`'s batch dimensions.
fn dims(op: &'static str, a: &Tensor, b: &Tensor, nt: bool) -> Result<Dims> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 {
        return shape_err(op, format!("need matrices (rank ≥ 2), got {sa:?} and {sb:?}"));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = if nt { (sb[sb.len() - 1], sb[sb.len() - 2]) } else { (sb[sb.len() - 2], sb[sb.len() - 1]) };
    if k != kb {
        return shape_err(op, format!("inner dimensions differ: {sa:?} and {sb:?}"));
    }
    let batch_a: usize = sa[..sa.len() - 2].iter().product();
    let mut out_shape = sa[..sa.len() - 2].to_vec();
    out_shape.extend([m, n]);
    if sb.len() == 2 {
        // Broadcast b: fold a's batch into its rows.
        return Ok(Dims { batch: 1, m: batch_a * m, k, n, out_shape });
    }
    if sa[..sa.len() - 2] != sb[..sb.len() - 2] {
        return shape_err(op, format!("batch dimensions differ: {sa:?} and {sb:?}"));
    }
    Ok(Dims { batch: batch_a, m, k, n, out_shape })
}

/// `a @ b` — `torch.matmul` for `a (…, M, K)`, `b (…, K, N)` or `b (K, N)`; output `(…, M, N)`.
pub fn matmul(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(tape, "matmul", a, b, false)
}

/// `a @ bᵀ` — `torch.matmul(a, b.transpose(-1, -2))` for `a (…, M, K)`, `b (…, N, K)` or
/// `b (N, K)`; output `(…, M, N)`.
pub fn matmul_nt(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(tape, "matmul_nt", a, b, true)
}

fn product(tape: &Tape, op: &'static str, a: &Tensor, b: &Tensor, nt: bool) -> Result<Tensor> {
    let d = dims(op, a, b, nt)?;
    #[cfg(feature = "cuda")]
    if a.is_cuda() || b.is_cuda() {
        return cuda::product(tape, op, a, b, d, nt);
    }
    with_float!(op, same_dtype(op, a, b)?, T => {
        let mut c = vec![T::ZERO; d.batch * d.m * d.n];
        bmm(&mut c, a.data::<T>(op)?, b.data::<T>(op)?, d.batch, d.m, d.k, d.n, false, nt);
        let (batch, m, k, n) = (d.batch, d.m, d.k, d.n);
        Ok(tape.record(op, &[a, b], T::wrap(c), d.out_shape, |_| ProductBwd::<T> { batch, m, k, n, nt, _t: Default::default() }))
    })
}

struct ProductBwd<T> {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    nt: bool,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for ProductBwd<T> {
    // C = A·B:  dA += dC·Bᵀ,  dB += Aᵀ·dC.   C = A·Bᵀ:  dA += dC·B,  dB += dCᵀ·A.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let dc = T::slice(dout).expect("dout dtype");
        let (ad, bd) = (a.data::<T>("matmul")?, b.data::<T>("matmul")?);
        let Self { batch, m, k, n, nt, .. } = *self;
        sink.accumulate::<T>(a, |da| bmm(da, dc, bd, batch, m, n, k, false, !nt))?;
        sink.accumulate::<T>(b, |db| {
            if nt {
                bmm(db, dc, ad, batch, n, m, k, true, false)
            } else {
                bmm(db, ad, dc, batch, k, m, n, true, false)
            }
        })
    }
}

/// `x @ wᵀ + bias` — `torch.nn.functional.linear`. `x (…, IN)`, `w (OUT, IN)`, `bias (OUT)`;
/// output `(…, OUT)`. One node: the backward is two GEMMs and a column sum.
pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let (sx, sw) = (x.shape(), w.shape());
    if sw.len() != 2 || sx.is_empty() || sx[sx.len() - 1] != sw[1] {
        return shape_err(OP, format!("x {sx:?} does not fit weight {sw:?} (expected x (…, {}))", sw.get(1).unwrap_or(&0)));
    }
    if let Some(b) = bias {
        if b.shape() != [sw[0]] {
            return shape_err(OP, format!("bias {:?} does not fit weight {sw:?}", b.shape()));
        }
        same_dtype(OP, x, b)?;
    }
    let (rows, inp, out) = (x.numel() / sw[1], sw[1], sw[0]);
    let mut out_shape = sx.to_vec();
    *out_shape.last_mut().expect("rank ≥ 1") = out;
    #[cfg(feature = "cuda")]
    if x.is_cuda() || w.is_cuda() {
        return cuda::linear(tape, x, w, bias, (rows, inp, out), out_shape);
    }
    with_float!(OP, same_dtype(OP, x, w)?, T => {
        let mut y = vec![T::ZERO; rows * out];
        if let Some(b) = bias {
            let bd = b.data::<T>(OP)?;
            y.chunks_mut(out.max(1)).for_each(|r| r.copy_from_slice(bd));
        }
        let xm = MatRef::new(x.data::<T>(OP)?, rows, inp, false);
        let wm = MatRef::new(w.data::<T>(OP)?, inp, out, true);
        let train = tape.tracks(&[x, w]) || bias.is_some_and(|b| tape.tracks(&[b]));
        // bf16 autocast (f32 only; f64 is never cast).
        let bf16 = tape.is_bf16() && xm.as_f32().is_some();
        if train || !keep_packed_weights() {
            gemm_autocast(&mut y, xm, wm, true, bf16);
        } else if let (true, Some(x32), Some(w32)) = (bf16, xm.as_f32(), wm.as_f32()) {
            let packed = w.derived("gemm packed Bᵀ bf16", || Buf::F32(pack_weight(w32, true)));
            let Buf::F32(packed) = &*packed else { unreachable!("packed bf16 weights are an f32 buffer") };
            gemm_weight(T::as_f32_mut(&mut y).expect("f32"), x32, packed, out, true);
        } else {
            // No backward: the weight's GEMM packing is made once and kept with the tensor (until
            // an optimizer step changes it), instead of on every call — at batch 1 the packing
            // of the weights was a large share of a forward.
            let packed = w.derived("gemm packed Bᵀ", || T::wrap(pack_b(wm, true)));
            gemm_packed(&mut y, xm, T::slice(&packed).expect("packed weight dtype"), out, true);
        }
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        Ok(tape.record(OP, &inputs, T::wrap(y), out_shape, |_| LinearBwd::<T> { rows, inp, out, bf16, _t: Default::default() }))
    })
}

/// Whether inference keeps packed copies of linear weights (about one more copy of the weights in
/// memory, for ~10 % faster batch-1 inference on MiniLM); `ENGRAM_PACKED_WEIGHTS=0` turns it off
/// for deployments short of memory.
fn keep_packed_weights() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ENGRAM_PACKED_WEIGHTS").is_none_or(|v| v != "0"))
}

struct LinearBwd<T> {
    rows: usize,
    inp: usize,
    out: usize,
    /// Both backward GEMMs in bf16 too (f32 only), as autocast's matmul backward.
    bf16: bool,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for LinearBwd<T> {
    // y = x·wᵀ + b:  dx += dy·w,  dw += dyᵀ·x,  db += Σ_rows dy.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let dy = T::slice(dout).expect("dout dtype");
        let Self { rows, inp, out, bf16, .. } = *self;
        let (xd, wd) = (x.data::<T>("linear")?, w.data::<T>("linear")?);
        sink.accumulate::<T>(x, |dx| gemm_autocast(dx, MatRef::new(dy, rows, out, false), MatRef::new(wd, out, inp, false), true, bf16))?;
        sink.accumulate::<T>(w, |dw| gemm_autocast(dw, MatRef::new(dy, out, rows, true), MatRef::new(xd, rows, inp, false), true, bf16))?;
        if let Some(b) = inputs.get(2) {
            sink.accumulate::<T>(b, |db| super::reduce::sum_rows(db, dy))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gemm_bf16::round_bf16;
    use crate::util::Rng;

    fn randn(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
        (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32).collect()
    }

    /// f64 reference of x·wᵀ (+ b) from already-rounded operands.
    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f64> {
        (0..rows * out).map(|e| b[e % out] as f64 + (0..inp).map(|k| x[e / out * inp + k] as f64 * w[e % out * inp + k] as f64).sum::<f64>()).collect()
    }

    fn close(name: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "{name}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn bf16_autocast_linear_is_the_product_of_rounded_operands_forward_and_backward() {
        let mut rng = Rng::new(21);
        let (rows, inp, out) = (37, 67, 45);
        let (xv, wv, bv, dyv) = (randn(&mut rng, &[rows, inp]), randn(&mut rng, &[out, inp]), randn(&mut rng, &[out]), randn(&mut rng, &[rows, out]));
        let x = Tensor::from_vec(xv.clone(), &[rows, inp]).unwrap().requires_grad();
        let w = Tensor::from_vec(wv.clone(), &[out, inp]).unwrap().requires_grad();
        let b = Tensor::from_vec(bv.clone(), &[out]).unwrap().requires_grad();
        let r = |v: &[f32]| v.iter().map(|&a| round_bf16(a)).collect::<Vec<f32>>();
        let t = |v: &[f32], m: usize, n: usize| (0..m * n).map(|e| v[e % m * n + e / m]).collect::<Vec<f32>>();
        // f32 sums of k exact products of normal(0,1) operands.
        let tol = 1e-5 * inp.max(rows) as f64;
        let tape = Tape::training(1).bf16(true);
        let y = linear(&tape, &x, &w, Some(&b)).unwrap();
        close("y", &y.to_f64_vec(), &reference(&r(&xv), &r(&wv), &bv, rows, inp, out), tol);
        let plain = linear(&Tape::training(1), &x, &w, Some(&b)).unwrap().to_f64_vec();
        let off = y.to_f64_vec().iter().zip(&plain).map(|(a, c)| (a - c).abs()).fold(0f64, f64::max);
        assert!(off > 1e-3, "bf16 rounding must show against f32 (max difference {off})");
        let dy = Tensor::from_vec(dyv.clone(), &[rows, out]).unwrap();
        let g = tape.backward_with(&y, &dy).unwrap();
        // dx = dy·w and dw = dyᵀ·x, each from bf16-rounded operands; db = Σ dy in f32.
        close("dx", &g.get::<f32>(&x).unwrap().iter().map(|&a| a as f64).collect::<Vec<f64>>(), &reference(&r(&dyv), &t(&r(&wv), out, inp), &vec![0.0; inp], rows, out, inp), tol);
        close("dw", &g.get::<f32>(&w).unwrap().iter().map(|&a| a as f64).collect::<Vec<f64>>(), &reference(&t(&r(&dyv), rows, out), &t(&r(&xv), rows, inp), &vec![0.0; inp], out, rows, inp), tol);
        let db: Vec<f64> = (0..out).map(|j| (0..rows).map(|i| dyv[i * out + j] as f64).sum()).collect();
        close("db", &g.get::<f32>(&b).unwrap().iter().map(|&a| a as f64).collect::<Vec<f64>>(), &db, 1e-4);
        // Inference keeps the packed bf16 weight: the same bits as the training path.
        let inf = linear(&Tape::inference().bf16(true), &x.detach(), &w.detach(), Some(&b.detach())).unwrap();
        assert_eq!(inf.to_f64_vec(), y.to_f64_vec());
        // f64 is never cast.
        let (x64, w64) = (Tensor::from_vec(xv.iter().map(|&a| a as f64).collect::<Vec<f64>>(), &[rows, inp]).unwrap(), Tensor::from_vec(wv.iter().map(|&a| a as f64).collect::<Vec<f64>>(), &[out, inp]).unwrap());
        let a = linear(&Tape::inference().bf16(true), &x64, &w64, None).unwrap().to_f64_vec();
        assert_eq!(a, linear(&Tape::inference(), &x64, &w64, None).unwrap().to_f64_vec());
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA paths: every product is the engine's own GEMM (kernels/matmul.cu).
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, check_cuda, dout_f32, gemm, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::tensor::{Buf, Tensor};

    pub(super) fn product(tape: &Tape, op: &'static str, a: &Tensor, b: &Tensor, d: super::Dims, nt: bool) -> Result<Tensor> {
        check_cuda(op, &[a, b])?;
        let dev = CudaDev::get()?;
        let (batch, m, k, n) = (d.batch, d.m, d.k, d.n);
        let mut c = dev.alloc::<f32>(batch * m * n)?;
        gemm(&dev, &mut c, a.cuda_f32(op)?, b.cuda_f32(op)?, batch, m, n, k, false, nt, (m * k, k * n, m * n), false, false)?;
        Ok(tape.record(op, &[a, b], wrap(c), d.out_shape, |_| ProductBwd { batch, m, k, n, nt }))
    }

    struct ProductBwd {
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        nt: bool,
    }

    impl Backward for ProductBwd {
        // dA = dC·op(B)ᵀ;  dB = A ᵀ·dC (or dCᵀ·A when B is stored transposed).
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let dc = dout_f32(dout, "matmul")?;
            let (ad, bd) = (a.cuda_f32("matmul")?, b.cuda_f32("matmul")?);
            let Self { batch, m, k, n, nt } = *self;
            sink.accumulate_cuda(a, |da| gemm(&dev, da, dc, bd, batch, m, k, n, false, !nt, (m * n, k * n, m * k), true, false))?;
            sink.accumulate_cuda(b, |db| {
                if nt {
                    gemm(&dev, db, dc, ad, batch, n, k, m, true, false, (m * n, m * k, n * k), true, false)
                } else {
                    gemm(&dev, db, ad, dc, batch, k, n, m, true, false, (m * k, m * n, k * n), true, false)
                }
            })
        }
    }

    pub(super) fn linear(
        tape: &Tape,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        (rows, inp, out): (usize, usize, usize),
        out_shape: Vec<usize>,
    ) -> Result<Tensor> {
        const OP: &str = "linear";
        check_cuda(OP, &[x, w])?;
        let dev = CudaDev::get()?;
        let mut y = dev.alloc::<f32>(rows * out)?;
        if let Some(b) = bias {
            check_cuda(OP, &[b])?;
            let (r, c) = (rows as i64, out as i32);
            launch!(dev, "elementwise", "bias_fill_v1", cfg_1d(rows * out); &mut y, b.cuda_f32(OP)?, &r, &c)?;
        }
        // bf16 autocast: all three GEMMs in bf16 (the bf16 tensor-core kernel), as on the CPU.
        let bf16 = tape.is_bf16();
        gemm(&dev, &mut y, x.cuda_f32(OP)?, w.cuda_f32(OP)?, 1, rows, out, inp, false, true, (0, 0, 0), bias.is_some(), bf16)?;
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        Ok(tape.record(OP, &inputs, wrap(y), out_shape, |_| LinearBwd { rows, inp, out, bf16 }))
    }

    struct LinearBwd {
        rows: usize,
        inp: usize,
        out: usize,
        bf16: bool,
    }

    impl Backward for LinearBwd {
        // y = x·wᵀ + b:  dx += dy·w,  dw += dyᵀ·x,  db += Σ_rows dy.
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let (x, w) = (&inputs[0], &inputs[1]);
            let dy = dout_f32(dout, "linear")?;
            let Self { rows, inp, out, bf16 } = *self;
            let (xd, wd) = (x.cuda_f32("linear")?, w.cuda_f32("linear")?);
            sink.accumulate_cuda(x, |dx| gemm(&dev, dx, dy, wd, 1, rows, inp, out, false, false, (0, 0, 0), true, bf16))?;
            sink.accumulate_cuda(w, |dw| gemm(&dev, dw, dy, xd, 1, out, inp, rows, true, false, (0, 0, 0), true, bf16))?;
            if let Some(b) = inputs.get(2) {
                sink.accumulate_cuda(b, |db| crate::ops::elementwise::cuda::sum_rows(db, dy, rows as i64, out as i32))?;
            }
            Ok(())
        }
    }
}

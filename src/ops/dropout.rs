//! Inverted dropout with a counter-based mask: element `i` of a call with seed `s` is kept iff
//! `uniform(s, i) ≥ p`. The mask is a pure function of (seed, index), so backward recomputes it
//! instead of saving it, a step replays bit for bit, and a GPU kernel can draw the same mask.

use rayon::prelude::*;

use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{value_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of the `call`-th dropout on a tape seeded with `seed` (public: the GPU kernels and
/// the emulated-kernel tests draw the same masks from it).
pub fn mix_seed(seed: u64, call: u64) -> u64 {
    mix64(seed ^ mix64(call.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Uniform in [0, 1) with 24 bits, as an f32 kernel would draw it.
#[inline]
pub(crate) fn uniform(seed: u64, i: u64) -> f32 {
    (mix64(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// `x · keep / (1 − p)` with `keep ~ Bernoulli(1 − p)` — `torch.nn.functional.dropout(x, p,
/// training)`. Identity (no node, no copy) on an inference tape or when `p = 0`. Any shape.
pub fn dropout(tape: &Tape, x: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return value_err("dropout", format!("p = {p} must be in [0, 1)"));
    }
    if !tape.is_training() || p == 0.0 {
        return Ok(x.clone());
    }
    let seed = tape.next_dropout_seed();
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return cuda::dropout(tape, x, p, seed);
    }
    with_float!("dropout", x.dtype(), T => {
        let mut y = x.data::<T>("dropout")?.to_vec();
        apply_mask(&mut y, seed, p, 0);
        Ok(tape.record("dropout", &[x], T::wrap(y), x.shape().to_vec(), |_| DropoutBwd::<T> { seed, p, _t: Default::default() }))
    })
}

/// `v[i] *= keep(base + i) / (1 − p)`: elements `base..base + v.len()` of a call's mask (the fused
/// attention drops its probabilities with it too).
pub(crate) fn apply_mask<T: Float>(v: &mut [T], seed: u64, p: f64, base: u64) {
    use super::elementwise::CHUNK;
    // Plain (not `wide`) chunks on purpose: the hash's 64-bit multiplies have no AVX2
    // instruction, and the emulated vector form measured no faster.
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| apply_mask_seq(xs, seed, p, base + (c * CHUNK) as u64));
}

/// [`apply_mask`] without rayon, for one row inside a kernel that is already parallel.
#[inline(always)]
pub(crate) fn apply_mask_seq<T: Float>(v: &mut [T], seed: u64, p: f64, base: u64) {
    let inv = T::from_f64(1.0 / (1.0 - p));
    let pf = p as f32;
    for (i, x) in v.iter_mut().enumerate() {
        *x = if uniform(seed, base + i as u64) >= pf { *x * inv } else { T::ZERO };
    }
}

struct DropoutBwd<T> {
    seed: u64,
    p: f64,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for DropoutBwd<T> {
    // dx += dy · keep / (1 − p), with the same mask recomputed from the seed.
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let mut g = T::slice(dout).expect("dout dtype").to_vec();
        apply_mask(&mut g, self.seed, self.p, 0);
        sink.add_owned(&inputs[0], T::wrap(g))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/dropout.cu): the same counter-based mask as the CPU.
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, dout_f32, launch, wrap, CudaDev};
    use crate::error::Result;
    use crate::float::Float;
    use crate::tensor::{Buf, Tensor};

    pub(super) fn dropout(tape: &Tape, x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
        let dev = CudaDev::get()?;
        let (n, pf, inv) = (x.numel() as i64, p as f32, <f32 as Float>::from_f64(1.0 / (1.0 - p)));
        let mut y = dev.alloc::<f32>(x.numel())?;
        launch!(dev, "dropout", "dropout_fwd_v1", cfg_1d(x.numel()); &mut y, x.cuda_f32("dropout")?, &seed, &pf, &inv, &n)?;
        Ok(tape.record("dropout", &[x], wrap(y), x.shape().to_vec(), |_| DropoutBwd { seed, pf, inv }))
    }

    struct DropoutBwd {
        seed: u64,
        pf: f32,
        inv: f32,
    }

    impl Backward for DropoutBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let dy = dout_f32(dout, "dropout")?;
            let n = inputs[0].numel() as i64;
            sink.accumulate_cuda(&inputs[0], |dx| {
                launch!(dev, "dropout", "dropout_bwd_v1", cfg_1d(n as usize); dx, dy, &self.seed, &self.pf, &self.inv, &n)
            })
        }
    }
}

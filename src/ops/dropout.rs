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

/// [`apply_mask`] without rayon, for one row inside a kernel that is already parallel. f32 on a
/// CPU with AVX-512DQ hashes eight indices per instruction ([`avx512::apply_f32`]); the rest, and
/// every other CPU, the scalar loop. Both draw the same mask bit for bit.
#[inline(always)]
pub(crate) fn apply_mask_seq<T: Float>(v: &mut [T], seed: u64, p: f64, base: u64) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        if let Some(v32) = T::as_f32_mut(v) {
            // SAFETY: the CPU has AVX-512F and AVX-512DQ (checked just above).
            let done = unsafe { avx512::apply_f32(v32, seed, p, base) };
            apply_mask_scalar(&mut v[done..], seed, p, base + done as u64);
            return;
        }
    }
    apply_mask_scalar(v, seed, p, base);
}

/// The mask's definition, one element at a time.
#[inline(always)]
fn apply_mask_scalar<T: Float>(v: &mut [T], seed: u64, p: f64, base: u64) {
    let inv = T::from_f64(1.0 / (1.0 - p));
    let pf = p as f32;
    for (i, x) in v.iter_mut().enumerate() {
        *x = if uniform(seed, base + i as u64) >= pf { *x * inv } else { T::ZERO };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The dropout hash eight lanes at a time: SplitMix64's two 64-bit multiplies are one
    //! `vpmullq` each (AVX-512DQ; AVX2 has no 64-bit multiply, and its emulation measured no
    //! faster than scalar code). Dropout was ~7 % of a bf16 MiniLM training step, mostly hashing.
    use std::arch::x86_64::*;

    const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(super) fn available() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| crate::ops::gemm::avx512_available() && std::is_x86_feature_detected!("avx512dq"))
    }

    /// SplitMix64's finaliser on eight lanes (`super::mix64`).
    #[inline(always)]
    unsafe fn mix64(z: __m512i) -> __m512i {
        let z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), _mm512_set1_epi64(0xbf58_476d_1ce4_e5b9u64 as i64));
        let z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), _mm512_set1_epi64(0x94d0_49bb_1331_11ebu64 as i64));
        _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z))
    }

    /// [`super::apply_mask_scalar`] on the first `v.len() / 16 · 16` elements; returns how many.
    /// Element `i` is kept iff `uniform(seed, base + i) ≥ p as f32`, i.e. iff its hash's top 24
    /// bits `u` satisfy `u · 2⁻²⁴ ≥ p` (both exact), i.e. `u ≥ ⌈p · 2²⁴⌉`, i.e. hash ≥ that · 2⁴⁰;
    /// kept elements are `x · inv` (the same f32 product), dropped ones +0.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn apply_f32(v: &mut [f32], seed: u64, p: f64, base: u64) -> usize {
        let n = v.len() / 16 * 16;
        if n == 0 {
            return 0;
        }
        let pf = p as f32;
        // ⌈pf · 2²⁴⌉ ≤ 2²⁴ − 1 for pf < 1, so the shifted threshold fits in 64 bits.
        let thresh = ((pf as f64 * (1u64 << 24) as f64).ceil() as u64) << 40;
        let t = _mm512_set1_epi64(thresh as i64);
        let inv = _mm512_set1_ps(<f32 as crate::float::Float>::from_f64(1.0 / (1.0 - p)));
        let lane = |j: u64| seed.wrapping_add(base.wrapping_add(j).wrapping_mul(PHI)) as i64;
        // The pre-mix states seed + (base + i)·φ of the next 16 elements, advanced by 16·φ.
        let mut z0 = _mm512_set_epi64(lane(7), lane(6), lane(5), lane(4), lane(3), lane(2), lane(1), lane(0));
        let mut z1 = _mm512_set_epi64(lane(15), lane(14), lane(13), lane(12), lane(11), lane(10), lane(9), lane(8));
        let step = _mm512_set1_epi64(16u64.wrapping_mul(PHI) as i64);
        let ptr = v.as_mut_ptr();
        for i in (0..n).step_by(16) {
            let k0 = _mm512_cmpge_epu64_mask(mix64(z0), t);
            let k1 = _mm512_cmpge_epu64_mask(mix64(z1), t);
            let keep: __mmask16 = k0 as u16 | ((k1 as u16) << 8);
            // SAFETY: i + 16 ≤ n ≤ v.len().
            let x = _mm512_loadu_ps(ptr.add(i));
            _mm512_storeu_ps(ptr.add(i), _mm512_maskz_mul_ps(keep, x, inv));
            z0 = _mm512_add_epi64(z0, step);
            z1 = _mm512_add_epi64(z1, step);
        }
        n
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    /// The vector path draws exactly the scalar mask: random seeds, bases (some past 2⁶²,
    /// where i·φ wraps), lengths with and without a tail, p at the edges, and inputs with NaN,
    /// ±Inf, −0 and subnormals — compared bit for bit.
    #[test]
    fn vector_mask_equals_the_scalar_definition() {
        let mut rng = Rng::new(5);
        let ps = [0.1, 0.5, 1e-9, 0.999_999, 0.3, 1.0 / 3.0, 5.960_464_5e-8];
        let mut checked = 0usize;
        for round in 0..60 {
            let seed = mix64(round as u64 * 7919);
            let base = if round % 10 == 9 { (1 << 62) + 3 } else { (rng.uniform() * 1e9) as u64 };
            let len = [0, 1, 15, 16, 17, 33, 100, 4096 + 13][round % 8];
            let p = ps[round % ps.len()];
            let mut x: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40, -1e-41];
            for (i, s) in specials.iter().enumerate() {
                if let Some(v) = x.get_mut(i * 3) {
                    *v = *s;
                }
            }
            let mut want = x.clone();
            apply_mask_scalar(&mut want, seed, p, base);
            let mut got = x.clone();
            apply_mask_seq(&mut got, seed, p, base);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "seed {seed:#x} base {base} p {p} len {len}: element {i}");
            }
            checked += len;
            // f64 takes the scalar path and draws the same mask.
            let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            apply_mask_seq(&mut x64, seed, p, base);
            for (a, b) in x64.iter().zip(&want) {
                assert_eq!(*a == 0.0, *b == 0.0);
            }
        }
        assert!(checked > 10_000);
        // p exactly at an element's draw u·2⁻²⁴ (kept: the test is ≥), and half a step above it
        // (dropped): the threshold's rounding, which random data meets once in 2²⁴ draws.
        let (seed, base) = (0xfeed_u64, 1000u64);
        let mut hit = 0;
        for i in 0..64u64 {
            let u = (uniform(seed, base + i) as f64 * (1u64 << 24) as f64) as u64;
            if !(1..1 << 23).contains(&u) {
                continue;
            }
            for (p, kept) in [(u as f64 / (1u64 << 24) as f64, true), ((u as f64 + 0.5) / (1u64 << 24) as f64, false)] {
                assert_eq!((p as f32) as f64, p, "the boundary p must be an f32");
                let mut got = vec![1.0f32; 64];
                apply_mask_seq(&mut got, seed, p, base);
                let mut want = vec![1.0f32; 64];
                apply_mask_scalar(&mut want, seed, p, base);
                assert_eq!(got, want, "boundary p {p} at element {i}");
                assert_eq!(got[i as usize] != 0.0, kept, "element {i} with p at its draw {p}");
                hit += 1;
            }
        }
        assert!(hit >= 10, "too few boundary cases ({hit})");
        #[cfg(target_arch = "x86_64")]
        if !avx512::available() {
            eprintln!("note: no AVX-512DQ here: only the scalar path was compared with itself");
        }
    }

    /// The mask keeps a 1 − p share of the elements (a mask stuck at all-kept or all-dropped would
    /// still equal itself above).
    #[test]
    fn mask_keeps_one_minus_p() {
        for p in [0.1, 0.5, 0.9] {
            let mut v = vec![1.0f32; 1 << 16];
            apply_mask_seq(&mut v, 0x1234, p, 99);
            let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        }
    }
}

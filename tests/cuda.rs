//! CUDA vs CPU parity: every op's forward and backward on the GPU against the CPU reference, on
//! random inputs with random upstream gradients at awkward shapes (widths not a multiple of 32,
//! batch 1, a fully padded key row, repeated ids), with every device output poisoned (NaN) before
//! its kernel runs so an unwritten element fails. Then the toy encoder of tests/toy_block.rs:
//! gradients and an AdamW training run on the GPU against the CPU.
//!
//! Tolerance: 1e-5 abs + 1e-4 rel (f32). Without the `cuda` feature or without a GPU every test
//! here prints that it was skipped and why.

mod common;

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_suite_skipped_without_the_cuda_feature() {
    eprintln!("SKIPPED: CUDA parity tests: {}", engram::device::cuda_available().unwrap_err());
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::toy::*;
    use super::common::*;
    use engram::autograd::Grads;
    use engram::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};
    use engram::testing::{assert_close, Rng};
    use engram::{ops, Device, Result, Tape, Tensor};

    /// True when a GPU is here (and turns output poisoning on); otherwise says why it skips.
    pub(super) fn gpu(test: &str) -> bool {
        match engram::device::cuda_available() {
            Ok(_) => {
                engram::device::cuda::set_poison(true);
                true
            }
            Err(why) => {
                eprintln!("SKIPPED: {test}: {why}");
                false
            }
        }
    }

    fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| x as f32).collect::<Vec<f32>>(), shape).unwrap()
    }

    /// Run `f` on the CPU and on the GPU with the same inputs and the same random upstream
    /// gradient; compare the outputs and the gradient of every tracked input.
    fn parity(name: &str, inputs: &[Tensor], f: impl Fn(&Tape, &[Tensor]) -> Result<Tensor>) {
        parity_on(name, inputs, false, f)
    }

    /// [`parity`] on tapes with bf16 autocast `bf16` on both devices.
    fn parity_on(name: &str, inputs: &[Tensor], bf16: bool, f: impl Fn(&Tape, &[Tensor]) -> Result<Tensor>) {
        let cpu_tape = Tape::training(11).bf16(bf16);
        let y = f(&cpu_tape, inputs).unwrap_or_else(|e| panic!("{name} (cpu): {e}"));
        let mut rng = Rng::new(0xd0e5);
        let dy = randn(&mut rng, y.shape());
        let tracked = inputs.iter().any(|t| t.is_tracked());
        let cpu_grads = if tracked { Some(cpu_tape.backward_with(&y, &dy).unwrap()) } else { None };

        let gin: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let d = t.to_device(Device::Cuda).unwrap();
                if t.is_tracked() {
                    d.requires_grad()
                } else {
                    d
                }
            })
            .collect();
        let gpu_tape = Tape::training(11).bf16(bf16);
        let yg = f(&gpu_tape, &gin).unwrap_or_else(|e| panic!("{name} (cuda): {e}"));
        assert_eq!(yg.device(), Device::Cuda, "{name}: output left the GPU");
        assert_eq!(yg.shape(), y.shape(), "{name}: output shape");
        assert_close(&format!("{name} forward"), &yg.to_f64_vec(), &y.to_f64_vec(), ATOL, RTOL);
        let Some(cpu_grads) = cpu_grads else { return };
        let gpu_grads = gpu_tape.backward_with(&yg, &dy.to_device(Device::Cuda).unwrap()).unwrap();
        for (i, (c, g)) in inputs.iter().zip(&gin).enumerate() {
            if !c.is_tracked() {
                continue;
            }
            let got = gpu_grads.tensor(g).unwrap_or_else(|| panic!("{name}: input {i} got no CUDA gradient"));
            // The CPU leaves no slot where the gradient is identically zero (all targets ignored).
            let want = cpu_grads.tensor(c).unwrap_or_else(|| Tensor::zeros(engram::DType::F32, c.shape()).unwrap());
            assert_eq!(got.device(), Device::Cuda, "{name}: gradient {i} left the GPU");
            assert_close(&format!("{name} d(input {i})"), &got.to_f64_vec(), &want.to_f64_vec(), ATOL, RTOL);
        }
    }

    #[test]
    fn poisoned_allocations_read_back_as_nan() {
        if !gpu("poison") {
            return;
        }
        let dev = engram::device::cuda::CudaDev::get().unwrap();
        let s = dev.alloc::<f32>(1000).unwrap();
        assert!(dev.dtoh(&s, 1000).unwrap().iter().all(|x| x.is_nan()), "poison mode must fill outputs with NaN");
    }

    #[test]
    fn matmul_linear_parity() {
        if !gpu("matmul") {
            return;
        }
        // Every f32-accurate GEMM kernel (v1, the production v2, the 3xTF32 tensor-core v3), forward and backward. The TF32 ones: the test below.
        for v in engram::device::cuda::GemmVariant::ALL.into_iter().filter(|v| !v.reduced_precision()) {
            eprintln!("matmul parity with {}", v.kernel());
            engram::device::cuda::with_gemm_variant(v, matmul_linear_parity_with_the_current_gemm);
        }
    }

    fn matmul_linear_parity_with_the_current_gemm() {
        let mut r = Rng::new(1);
        for &(m, k, n) in &[(1, 1, 1), (37, 19, 45), (65, 130, 67), (5, 300, 3), (257, 70, 131)] {
            let x = randn(&mut r, &[m, k]).requires_grad();
            let w = randn(&mut r, &[n, k]).requires_grad();
            let b = randn(&mut r, &[n]).requires_grad();
            parity(&format!("linear {m}x{k}x{n}"), &[x.clone(), w.clone(), b], |t, i| ops::linear(t, &i[0], &i[1], Some(&i[2])));
            parity(&format!("linear nobias {m}x{k}x{n}"), &[x.clone(), w.clone()], |t, i| ops::linear(t, &i[0], &i[1], None));
            let wt = randn(&mut r, &[k, n]).requires_grad();
            parity(&format!("matmul 2d {m}x{k}x{n}"), &[x.clone(), wt], |t, i| ops::matmul(t, &i[0], &i[1]));
        }
        // Batched, both layouts; rank-3 input against a shared 2-D weight.
        let a = randn(&mut r, &[2, 3, 5, 7]).requires_grad();
        let b = randn(&mut r, &[2, 3, 7, 9]).requires_grad();
        parity("matmul batched", &[a.clone(), b], |t, i| ops::matmul(t, &i[0], &i[1]));
        let bn = randn(&mut r, &[2, 3, 9, 7]).requires_grad();
        parity("matmul_nt batched", &[a.clone(), bn], |t, i| ops::matmul_nt(t, &i[0], &i[1]));
        let x3 = randn(&mut r, &[2, 3, 7]).requires_grad();
        let w = randn(&mut r, &[11, 7]).requires_grad();
        parity("linear rank-3", &[x3, w], |t, i| ops::linear(t, &i[0], &i[1], None));
        // q = k aliasing: both gradient contributions land in one slot.
        parity("matmul_nt self", &[a], |t, i| ops::matmul_nt(t, &i[0], &i[0]));
    }

    /// bf16 autocast on the GPU (`gemm_v3_bf16`) against the CPU's (`ops::gemm_bf16`): the same
    /// exact products of bf16-rounded operands, summed in f32 in another order, so the f32
    /// tolerances hold for the output and for dx, dw and db — and the result is not the f32 one
    /// (a kernel that skipped the rounding would be off by ~2⁻⁹ per product). Whatever f32 GEMM
    /// `ENGRAM_GEMM` or a forced variant names, a bf16 tape's linear layers run the bf16 kernel.
    #[test]
    fn bf16_autocast_linear_parity() {
        if !gpu("bf16 linear") {
            return;
        }
        use engram::device::cuda::{with_gemm_variant, GemmVariant};
        let mut r = Rng::new(17);
        for &(m, k, n) in &[(1, 1, 1), (37, 19, 45), (65, 130, 67), (257, 70, 131), (130, 384, 200)] {
            let x = randn(&mut r, &[m, k]).requires_grad();
            let w = randn(&mut r, &[n, k]).requires_grad();
            let b = randn(&mut r, &[n]).requires_grad();
            for v in [GemmVariant::V1, GemmVariant::V3] {
                with_gemm_variant(v, || {
                    parity_on(&format!("bf16 linear {m}x{k}x{n}"), &[x.clone(), w.clone(), b.clone()], true, |t, i| ops::linear(t, &i[0], &i[1], Some(&i[2])));
                });
            }
            let x3 = randn(&mut r, &[2, m, k]).requires_grad();
            parity_on(&format!("bf16 linear rank-3 nobias {m}x{k}x{n}"), &[x3, w.clone()], true, |t, i| ops::linear(t, &i[0], &i[1], None));
            if k > 1 {
                let (xg, wg) = (x.to_device(Device::Cuda).unwrap(), w.to_device(Device::Cuda).unwrap());
                let y16 = ops::linear(&Tape::inference().bf16(true), &xg, &wg, None).unwrap().to_f64_vec();
                let y32 = ops::linear(&Tape::inference(), &xg, &wg, None).unwrap().to_f64_vec();
                let diff = y16.iter().zip(&y32).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(diff > 1e-3, "bf16 linear {m}x{k}x{n} on the GPU equals the f32 one (max diff {diff:e}): no bf16 rounding");
            }
        }
    }

    /// The TF32 GEMMs (`ENGRAM_GEMM=tf32`) round each input to a 10-bit mantissa, so each
    /// product is off by at most 2⁻¹⁰ of its size: every output and gradient must be within
    /// 1.1·2⁻¹⁰·Σ|a·b| (+1e-5) of the CPU's f32 result, with Σ|a·b| taken by running the same op
    /// on the CPU on |inputs| with |upstream gradient| — all three GEMM layouts of a linear's
    /// forward and backward, ragged shapes, batched matmuls.
    #[test]
    fn tf32_gemm_errors_stay_within_tf32_rounding() {
        if !gpu("tf32 gemm") {
            return;
        }
        use engram::device::cuda::{with_gemm_variant, GemmVariant};
        let abs = |t: &Tensor| {
            let v: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x.abs() as f32).collect();
            let a = Tensor::from_vec(v, t.shape()).unwrap();
            if t.is_tracked() {
                a.requires_grad()
            } else {
                a
            }
        };
        let check = |v: GemmVariant, name: &str, inputs: &[Tensor], f: &dyn Fn(&Tape, &[Tensor]) -> Result<Tensor>| {
            let run_cpu = |ins: &[Tensor], dy: &Tensor| {
                let tape = Tape::training(1);
                let y = f(&tape, ins).unwrap();
                let g = tape.backward_with(&y, dy).unwrap();
                let grads: Vec<Vec<f64>> = ins.iter().map(|t| g.tensor(t).unwrap().to_f64_vec()).collect();
                (y.to_f64_vec(), grads)
            };
            let shape = f(&Tape::inference(), inputs).unwrap().shape().to_vec();
            let dy = randn(&mut Rng::new(5), &shape);
            let (want, want_g) = run_cpu(inputs, &dy);
            let abs_in: Vec<Tensor> = inputs.iter().map(abs).collect();
            let (mag, mag_g) = run_cpu(&abs_in, &abs(&dy));
            let gin: Vec<Tensor> = inputs.iter().map(|t| t.to_device(Device::Cuda).unwrap().requires_grad()).collect();
            let tape = Tape::training(1);
            let yg = with_gemm_variant(v, || f(&tape, &gin)).unwrap();
            let gg = with_gemm_variant(v, || tape.backward_with(&yg, &dy.to_device(Device::Cuda).unwrap())).unwrap();
            let within = |what: &str, got: &[f64], want: &[f64], mag: &[f64]| {
                for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
                    let bound = 1.1 * m / 1024.0 + 1e-5;
                    assert!((g - w).abs() <= bound, "{} {name} {what}[{i}]: {g:e} vs CPU {w:e}, beyond the TF32 bound {bound:e}", v.kernel());
                }
            };
            within("forward", &yg.to_f64_vec(), &want, &mag);
            for (i, t) in gin.iter().enumerate() {
                within(&format!("d(input {i})"), &gg.tensor(t).unwrap().to_f64_vec(), &want_g[i], &mag_g[i]);
            }
        };
        let mut r = Rng::new(9);
        for v in GemmVariant::ALL.into_iter().filter(|v| v.reduced_precision()) {
            for &(m, k, n) in &[(1, 1, 1), (37, 19, 45), (257, 70, 131), (130, 384, 200)] {
                let x = randn(&mut r, &[m, k]).requires_grad();
                let w = randn(&mut r, &[n, k]).requires_grad();
                check(v, &format!("linear {m}x{k}x{n}"), &[x.clone(), w], &|t, i| ops::linear(t, &i[0], &i[1], None));
                let wt = randn(&mut r, &[k, n]).requires_grad();
                check(v, &format!("matmul {m}x{k}x{n}"), &[x, wt], &|t, i| ops::matmul(t, &i[0], &i[1]));
            }
            let a = randn(&mut r, &[2, 3, 5, 7]).requires_grad();
            let b = randn(&mut r, &[2, 3, 9, 7]).requires_grad();
            check(v, "matmul_nt batched", &[a, b], &|t, i| ops::matmul_nt(t, &i[0], &i[1]));
        }
    }

    /// Long sums: y = x·wᵀ with K = 8192 for every f32 GEMM variant and the bf16 tape's GEMM,
    /// against an f64 reference on the operands rounded as the kernel rounds them (TF32: nearest,
    /// ties away; bf16: nearest even), so all are held to f32-level sums: max |Δ|/Σ|a·b| (as
    /// tests/emu/gemm.cpp) and the mean signed error (toward larger |y|) over the mean Σ|a·b|. The tensor cores' adds
    /// round toward zero: 3xTF32 products added straight into the running accumulator drifted by
    /// −2.7e-4 at K = 3072 on an H100 (drift ~4e-7 here), f32 sums wander both ways (~1e-9).
    #[test]
    fn long_k_gemm_sums_stay_f32_accurate_and_unbiased() {
        if !gpu("long-K gemm") {
            return;
        }
        use engram::device::cuda::{with_gemm_variant, GemmVariant};
        let (m, n, k) = (128usize, 128usize, 8192usize);
        let mut r = Rng::new(21);
        let x = randn(&mut r, &[m, k]);
        let w = randn(&mut r, &[n, k]);
        let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
        let tf32 = |v: f64| {
            let f = v as f32;
            f32::from_bits((f.to_bits() + 0x1000) & 0xffff_e000) as f64
        };
        let bf16 = |v: f64| half::bf16::from_f32(v as f32).to_f32() as f64;
        let reference = |round: &dyn Fn(f64) -> f64| {
            let (xr, wr): (Vec<f64>, Vec<f64>) = (xv.iter().map(|&v| round(v)).collect(), wv.iter().map(|&v| round(v)).collect());
            let mut y = vec![0.0; m * n];
            let mut mag = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    let (a, b) = (&xr[i * k..(i + 1) * k], &wr[j * k..(j + 1) * k]);
                    y[i * n + j] = a.iter().zip(b).map(|(p, q)| p * q).sum();
                    mag[i * n + j] = a.iter().zip(b).map(|(p, q)| (p * q).abs()).sum();
                }
            }
            (y, mag)
        };
        let exact = reference(&|v| v);
        let (rt, rb) = (reference(&tf32), reference(&bf16));
        let (xg, wg) = (x.to_device(Device::Cuda).unwrap(), w.to_device(Device::Cuda).unwrap());
        let check = |what: &str, got: Vec<f64>, (want, mag): &(Vec<f64>, Vec<f64>)| {
            let worst = got.iter().zip(want).zip(mag).map(|((g, w), m)| (g - w).abs() / m).fold(0.0, f64::max);
            let signed: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * w.signum()).sum();
            let drift = signed.abs() / mag.iter().sum::<f64>();
            eprintln!("{what} K {k}: max |Δ|/Σ|a·b| {worst:.2e}, drift {drift:.1e}");
            assert!(worst <= 1e-5, "{what} at K = {k}: max |Δ|/Σ|a·b| = {worst:e}");
            assert!(drift <= 2e-8, "{what} at K = {k}: the sums drift one way by {drift:e} of Σ|a·b|");
        };
        for v in GemmVariant::ALL {
            let y = with_gemm_variant(v, || ops::linear(&Tape::inference(), &xg, &wg, None)).unwrap();
            check(v.kernel(), y.to_f64_vec(), if v.reduced_precision() { &rt } else { &exact });
        }
        // A bf16 tape picks gemm_v3_bf16(_64) by size (here the 64-row tile; the 128-row one is
        // the same code with BM3 = 128).
        let y = ops::linear(&Tape::inference().bf16(true), &xg, &wg, None).unwrap();
        check("bf16 tape (gemm_v3_bf16_64)", y.to_f64_vec(), &rb);
    }

    #[test]
    fn elementwise_and_activation_parity() {
        if !gpu("elementwise") {
            return;
        }
        let mut r = Rng::new(2);
        let x = randn(&mut r, &[3, 37]).requires_grad();
        let y = randn(&mut r, &[3, 37]).requires_grad();
        let b = randn(&mut r, &[37]).requires_grad();
        parity("add", &[x.clone(), y], |t, i| ops::add(t, &i[0], &i[1]));
        parity("add self", std::slice::from_ref(&x), |t, i| ops::add(t, &i[0], &i[0]));
        parity("bias_add", &[x.clone(), b], |t, i| ops::bias_add(t, &i[0], &i[1]));
        parity("scale", std::slice::from_ref(&x), |t, i| ops::scale(t, &i[0], -0.37));
        let wide = Tensor::from_vec(
            Rng::new(3).normal_vec(5 * 1001).into_iter().map(|v| (3.0 * v) as f32).collect::<Vec<f32>>(),
            &[5, 1001],
        )
        .unwrap()
        .requires_grad();
        parity("gelu", std::slice::from_ref(&wide), |t, i| ops::gelu(t, &i[0]));
        parity("gelu_tanh", std::slice::from_ref(&wide), |t, i| ops::gelu_tanh(t, &i[0]));
        parity("tanh", std::slice::from_ref(&wide), |t, i| ops::tanh(t, &i[0]));
        parity("relu", std::slice::from_ref(&wide), |t, i| ops::relu(t, &i[0]));
        parity("softmax", std::slice::from_ref(&wide), |t, i| ops::softmax(t, &i[0]));
        parity("softmax narrow", &[x], |t, i| ops::softmax(t, &i[0]));
        parity("dropout", &[wide], |t, i| ops::dropout(t, &ops::dropout(t, &i[0], 0.3)?, 0.1));
    }

    #[test]
    fn concat_narrow_parity() {
        if !gpu("concat/narrow") {
            return;
        }
        let mut r = Rng::new(21);
        let a = randn(&mut r, &[3, 5, 33]).requires_grad();
        let m = randn(&mut r, &[3, 4, 33]).requires_grad();
        let n = randn(&mut r, &[2, 5, 33]).requires_grad();
        parity("concat axis 1 (memory splice)", &[a.clone(), m], |t, i| {
            ops::concat(t, &[&ops::narrow(t, &i[0], 1, 0, 1)?, &i[1], &ops::narrow(t, &i[0], 1, 1, 4)?], 1)
        });
        parity("concat axis 0 + aliased", &[a.clone(), n], |t, i| ops::concat(t, &[&i[0], &i[1], &i[0]], 0));
        parity("narrow axis 2", &[a], |t, i| ops::narrow(t, &i[0], 2, 7, 19));
    }

    #[test]
    fn layer_norm_parity() {
        if !gpu("layer_norm") {
            return;
        }
        let mut r = Rng::new(4);
        for shape in [[1usize, 1, 7], [2, 5, 33], [3, 2, 1000]] {
            let c = shape[2];
            let x = randn(&mut r, &shape).requires_grad();
            let w = randn(&mut r, &[c]).requires_grad();
            let b = randn(&mut r, &[c]).requires_grad();
            parity(&format!("layer_norm {shape:?}"), &[x.clone(), w.clone(), b], |t, i| ops::layer_norm(t, &i[0], &i[1], &i[2], 1e-5));
            // Frozen affine parameters: only dx.
            let (wf, bf) = (w.detach(), randn(&mut r, &[c]));
            parity(&format!("layer_norm frozen {shape:?}"), &[x, wf, bf], |t, i| ops::layer_norm(t, &i[0], &i[1], &i[2], 1e-12));
        }
    }

    #[test]
    fn attention_parity_with_padding_and_a_fully_masked_row() {
        if !gpu("attention") {
            return;
        }
        // Both kernels: v1 and the flash-style v2 (production for heads ≤ 64).
        for v in [ops::AttentionVariant::V1, ops::AttentionVariant::V2] {
            eprintln!("attention parity with {v:?}");
            ops::with_attention_variant(v, attention_parity_with_the_current_kernel);
        }
    }

    fn attention_parity_with_the_current_kernel() {
        let mut r = Rng::new(5);
        for &(b, nh, tq, tk, hs) in &[(1, 1, 1, 1, 1), (2, 3, 5, 7, 33), (3, 2, 4, 4, 8), (1, 2, 3, 300, 16), (2, 2, 70, 45, 64)] {
            let q = randn(&mut r, &[b, nh, tq, hs]).requires_grad();
            let k = randn(&mut r, &[b, nh, tk, hs]).requires_grad();
            let v = randn(&mut r, &[b, nh, tk, hs]).requires_grad();
            // Batch row 0 keeps a prefix, the last batch row (when b > 1) is fully padded.
            let mask: Vec<i64> = (0..b * tk)
                .map(|i| {
                    let (bi, j) = (i / tk, i % tk);
                    if b > 1 && bi == b - 1 {
                        0
                    } else {
                        (j < tk - tk / 3) as i64
                    }
                })
                .collect();
            let mask = Tensor::from_ids(mask, &[b, tk]).unwrap();
            let mask2 = mask.clone();
            let scale = 1.0 / (hs as f64).sqrt();
            let name = format!("attention b{b} nh{nh} tq{tq} tk{tk} hs{hs}");
            parity(&name, &[q.clone(), k.clone(), v.clone(), mask], |t, i| ops::attention(t, &i[0], &i[1], &i[2], Some(&i[3]), scale, 0.0));
            parity(&format!("{name} unmasked"), &[q.clone(), k.clone(), v.clone()], |t, i| ops::attention(t, &i[0], &i[1], &i[2], None, scale, 0.0));
            // Dropout of the probabilities: the kernels redraw the CPU's counter-based mask.
            parity(&format!("{name} dropout"), &[q.clone(), k, v, mask2], |t, i| ops::attention(t, &i[0], &i[1], &i[2], Some(&i[3]), scale, 0.2));
        }
        // Self-attention with q = k = v (one tensor, three gradient contributions).
        let x = randn(&mut r, &[2, 2, 6, 5]).requires_grad();
        parity("attention q=k=v", &[x], |t, i| ops::attention(t, &i[0], &i[0], &i[0], None, 0.5, 0.0));
    }

    #[test]
    fn embedding_cross_entropy_pooling_heads_parity() {
        if !gpu("embedding") {
            return;
        }
        let mut r = Rng::new(6);
        let table = randn(&mut r, &[11, 13]).requires_grad();
        let ids = Tensor::from_ids(vec![3, 0, 3, 10, 3, 1, 0, 7], &[2, 4]).unwrap();
        parity("embedding", &[ids.clone(), table.clone()], |t, i| ops::embedding(t, &i[0], &i[1], None));
        parity("embedding padding_idx", &[ids, table], |t, i| ops::embedding(t, &i[0], &i[1], Some(0)));

        let logits = randn(&mut r, &[2, 3, 37]).requires_grad();
        let targets = Tensor::from_ids(vec![5, -100, 36, 0, -100, 12], &[2, 3]).unwrap();
        parity("cross_entropy", &[logits.clone(), targets], |t, i| ops::cross_entropy(t, &i[0], &i[1]));
        let ignored = Tensor::from_ids(vec![-100; 6], &[2, 3]).unwrap();
        parity("cross_entropy label smoothing", &[logits.clone(), Tensor::from_ids(vec![5, -100, 36, 0, -100, 12], &[2, 3]).unwrap()], |t, i| {
            ops::cross_entropy_smoothed(t, &i[0], &i[1], 0.1)
        });
        parity("cross_entropy all ignored", &[logits.clone(), ignored.clone()], |t, i| ops::cross_entropy(t, &i[0], &i[1]));
        let w: Vec<f64> = (0..37).map(|j| if j == 36 { 0.0 } else { 0.25 + (j % 5) as f64 * 0.5 }).collect();
        for eps in [0.0, 0.1] {
            parity(&format!("cross_entropy class weights ε={eps}"), &[logits.clone(), Tensor::from_ids(vec![5, -100, 36, 0, -100, 12], &[2, 3]).unwrap()], |t, i| {
                ops::cross_entropy_weighted(t, &i[0], &i[1], &w, eps)
            });
        }
        let zero_weight = Tensor::from_ids(vec![36, -100, 36, -100, -100, 36], &[2, 3]).unwrap();
        parity("cross_entropy targets of weight 0", &[logits.clone(), zero_weight], |t, i| ops::cross_entropy_weighted(t, &i[0], &i[1], &w, 0.0));
        parity("cross_entropy weighted all ignored", &[logits, ignored], |t, i| ops::cross_entropy_weighted(t, &i[0], &i[1], &w, 0.1));

        // Multi-label and regression heads: more elements than one block's 1024 threads.
        let logits = ops::scale(&Tape::inference(), &randn(&mut r, &[37, 41]), 4.0).unwrap().requires_grad();
        let hot: Vec<f32> = (0..37 * 41).map(|i| [0.0, 1.0, 0.0, 0.3][i % 4]).collect();
        let hot = Tensor::from_vec(hot, &[37, 41]).unwrap();
        parity("binary_cross_entropy_with_logits", &[logits.clone(), hot.clone()], |t, i| ops::binary_cross_entropy_with_logits(t, &i[0], &i[1]));
        let pw: Vec<f64> = (0..41).map(|j| [1.0, 3.5, 0.0, 0.25, 12.0][j % 5]).collect();
        parity("binary_cross_entropy_with_logits pos_weight", &[logits.clone(), hot], |t, i| ops::binary_cross_entropy_with_logits_weighted(t, &i[0], &i[1], &pw));
        let target = randn(&mut r, &[37, 41]);
        parity("mse_loss", &[logits, target], |t, i| ops::mse_loss(t, &i[0], &i[1]));

        let x = randn(&mut r, &[3, 5, 17]).requires_grad();
        let mask = Tensor::from_ids(vec![1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1], &[3, 5]).unwrap();
        parity("mean_pool with an empty row", &[x, mask], |t, i| ops::mean_pool(t, &i[0], &i[1]));

        let h = randn(&mut r, &[2, 5, 12]).requires_grad();
        parity("split_heads", std::slice::from_ref(&h), |t, i| ops::split_heads(t, &i[0], 3));
        parity("split+merge", std::slice::from_ref(&h), |t, i| ops::merge_heads(t, &ops::split_heads(t, &i[0], 4)?));
        parity("reshape", std::slice::from_ref(&h), |t, i| ops::reshape(t, &i[0], &[10, 12]));
        parity("token", &[h], |t, i| ops::add(t, &ops::token(t, &i[0], 0)?, &ops::token(t, &i[0], 3)?));
    }

    #[test]
    fn bad_inputs_on_the_gpu_are_errors_not_panics() {
        if !gpu("bad inputs") {
            return;
        }
        let tape = Tape::training(0);
        let table = Tensor::from_vec(vec![0f32; 12], &[4, 3]).unwrap().to_device(Device::Cuda).unwrap();
        let ids = Tensor::from_ids(vec![1, 4], &[2]).unwrap().to_device(Device::Cuda).unwrap();
        let e = ops::embedding(&tape, &ids, &table, None).unwrap_err().to_string();
        assert!(e.contains("embedding") && e.contains("id 4"), "{e}");
        let cpu = Tensor::from_vec(vec![0f32; 12], &[4, 3]).unwrap();
        let e = ops::add(&tape, &table, &cpu).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("devices"), "{e}");
        let logits = Tensor::from_vec(vec![0f32; 6], &[2, 3]).unwrap().to_device(Device::Cuda).unwrap();
        let t = Tensor::from_ids(vec![0, 3], &[2]).unwrap().to_device(Device::Cuda).unwrap();
        let e = ops::cross_entropy(&tape, &logits, &t).unwrap_err().to_string();
        assert!(e.contains("cross_entropy") && e.contains("target 3"), "{e}");
    }

    #[test]
    fn toy_encoder_gradients_and_training_on_the_gpu_match_the_cpu() {
        if !gpu("toy encoder") {
            return;
        }
        let (fx, p_cpu, d) = setup();
        let (ids, mask, labels) = (id_tensor(&fx["ids"]), id_tensor(&fx["mask"]), id_tensor(&fx["labels"]));
        let to_gpu = |t: &Tensor| t.to_device(Device::Cuda).unwrap();
        let mut p_gpu: std::collections::BTreeMap<String, Tensor> = p_cpu.iter().map(|(k, v)| (k.clone(), to_gpu(v).requires_grad())).collect();
        let (gids, gmask, glabels) = (to_gpu(&ids), to_gpu(&mask), to_gpu(&labels));

        // One step: loss and every parameter gradient.
        let tc = Tape::training(0);
        let lc = forward(&tc, &p_cpu, &d, &ids, &mask, &labels).unwrap();
        let gc = tc.backward(&lc).unwrap();
        let tg = Tape::training(0);
        let lg = forward(&tg, &p_gpu, &d, &gids, &gmask, &glabels).unwrap();
        assert_eq!(lg.device(), Device::Cuda);
        let gg = tg.backward(&lg).unwrap();
        assert_close("toy loss (cuda)", &[lg.item().unwrap()], &[lc.item().unwrap()], ATOL, RTOL);
        for (name, t) in &p_cpu {
            let want = gc.tensor(t).unwrap_or_else(|| panic!("{name}: no CPU gradient"));
            let got = gg.tensor(&p_gpu[name]).unwrap_or_else(|| panic!("{name}: no CUDA gradient"));
            assert_close(&format!("d{name} (cuda)"), &got.to_f64_vec(), &want.to_f64_vec(), ATOL, RTOL);
        }

        // Training: 25 AdamW steps, then 25 SGD-with-momentum steps (the CUDA kernels adamw_step_v1,
        // sgd_step_v1 vs the CPU references), clipping and weight decay on both devices.
        let data = [(&ids, &mask, &labels), (&gids, &gmask, &glabels)];
        let mut p_cpu = p_cpu;
        let (mut oc, mut og) = (AdamW::new(AdamWConfig::default()), AdamW::new(AdamWConfig::default()));
        train_both("AdamW", [&mut p_cpu, &mut p_gpu], &d, data, 0.5, |i, g, grads| [&mut oc, &mut og][i].step(g, grads, 3e-3));
        let sgd = || Sgd::new(SgdConfig { momentum: 0.9, ..Default::default() });
        let (mut sc, mut sg) = (sgd(), sgd());
        train_both("SGD", [&mut p_cpu, &mut p_gpu], &d, data, 0.9, |i, g, grads| [&mut sc, &mut sg][i].step(g, grads, 0.05));
    }

    type Params = std::collections::BTreeMap<String, Tensor>;

    /// 25 steps of `step(device index, groups, grads)` on the CPU (0) and GPU (1) copies, with
    /// clipping and HF weight-decay groups: the loss curves and the final weights agree, and the
    /// GPU loss falls below `fall` × its start.
    fn train_both(
        what: &str,
        params: [&mut Params; 2],
        d: &Dims,
        data: [(&Tensor, &Tensor, &Tensor); 2],
        fall: f64,
        mut step: impl FnMut(usize, &mut [ParamGroup], &Grads) -> Result<()>,
    ) {
        let [p_cpu, p_gpu] = params;
        let mut curves = [Vec::new(), Vec::new()];
        for _ in 0..25 {
            for (dev, p) in [&mut *p_cpu, &mut *p_gpu].into_iter().enumerate() {
                let (i, m, l) = data[dev];
                let tape = Tape::training(0);
                let loss = forward(&tape, p, d, i, m, l).unwrap();
                curves[dev].push(loss.item().unwrap());
                let mut grads = tape.backward(&loss).unwrap();
                let refs: Vec<&Tensor> = p.values().collect();
                clip_grad_norm(&mut grads, &refs, 1.0).unwrap();
                let named: Vec<(String, &mut Tensor)> = p.iter_mut().map(|(k, v)| (k.replace("ln", "LayerNorm"), v)).collect();
                step(dev, &mut hf_param_groups(named, 0.01), &grads).unwrap_or_else(|e| panic!("{what} step: {e}"));
            }
        }
        let [cc, cg] = &curves;
        assert_close(&format!("toy loss curve, {what} (cuda vs cpu)"), cg, cc, 1e-4, 1e-3);
        assert!(cg.last().unwrap() < &(fall * cg[0]), "{what}: GPU training did not reduce the loss: {cg:?}");
        for (name, t) in p_cpu.iter() {
            assert_eq!(p_gpu[name].device(), Device::Cuda, "{name} left the GPU");
            // The key bias has an analytically zero gradient (softmax is shift-invariant per query
            // row), so its "gradient" is rounding noise that Adam's m/√v normalisation turns into
            // full-size, device-dependent steps. It cannot match and does not affect the loss.
            if name.ends_with(".k.bias") {
                continue;
            }
            assert_close(&format!("{name} after {what} training (cuda)"), &p_gpu[name].to_f64_vec(), &t.to_f64_vec(), 1e-4, 1e-3);
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu_bert {
    //! Real BERT on the GPU: the tiny BERT's logits, loss and gradients vs PyTorch, and
    //! all-MiniLM-L6-v2's last hidden state vs transformers (f32, ≤ 1e-3).
    use std::path::PathBuf;

    use engram::data::BertTokenizer;
    use engram::models::bert::weights::read_safetensors;
    use engram::models::bert::{Bert, Head};
    use engram::testing::assert_close;
    use super::gpu::gpu;
    use crate::common::root;
    use engram::{ops, Device, Tape};


    #[test]
    fn tiny_bert_on_the_gpu_matches_pytorch() {
        if !gpu("tiny bert") {
            return;
        }
        // The random BERT, DistilBERT (its names, no token types, ReLU head) and RoBERTa
        // (positions from the padding index, its own head; XLM-R with a Unigram tokenizer), and
        // ELECTRA (narrow embeddings projected, a GELU head), ALBERT (one layer shared by three).
        for fixture in ["tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-xlm-roberta", "tiny-electra", "tiny-albert"] {
            let dir = root().join("weights").join(fixture);
            let (mut bert, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
            bert.to_device(Device::Cuda).unwrap();
            let r = read_safetensors(dir.join("reference.safetensors")).unwrap();
            let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
            let pairs = [
                ("how do i reset my password?", "click the link in the email."),
                ("the weather is nice today", "it is sunny and warm"),
                ("a", "b c d e f g h i j k"),
            ];
            let batch = tok.encode_pairs(&pairs).unwrap().to_device(Device::Cuda).unwrap();
            let tape = Tape::training(0);
            let logits = bert.logits(&tape, &batch, false).unwrap();
            assert_eq!(logits.device(), Device::Cuda);
            assert_close(&format!("{fixture} logits (cuda)"), &logits.to_f64_vec(), &r["logits"].to_f64_vec(), 1e-5, 1e-4);
            let loss = ops::cross_entropy(&tape, &logits, &r["labels"].to_device(Device::Cuda).unwrap()).unwrap();
            let grads = tape.backward(&loss).unwrap();
            for (name, p) in &bert.params {
                let g = grads.tensor(p).unwrap_or_else(|| panic!("{fixture} {name}: no gradient on the GPU"));
                let hf = format!("grad.{}", bert.hf_name(name));
                assert_close(&format!("{fixture} d{name} (cuda)"), &g.to_f64_vec(), &r[&hf].to_f64_vec(), 1e-5, 1e-4);
            }
        }
    }

    #[test]
    fn minilm_on_the_gpu_matches_transformers() {
        if !gpu("minilm") {
            return;
        }
        let dir = std::env::var_os("ENGRAM_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("weights/cache/all-MiniLM-L6-v2"));
        if !dir.join("model.safetensors").is_file() {
            eprintln!("SKIPPED: minilm on the GPU: {} not installed (./scripts/install-weights.sh)", dir.display());
            return;
        }
        let r = read_safetensors(root().join("weights/minilm_reference.safetensors")).unwrap();
        let (mut bert, _) = Bert::load(&dir, Head::None, 0).unwrap();
        bert.to_device(Device::Cuda).unwrap();
        let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 256).unwrap();
        let sentences = [
            "The cat sat on the mat.",
            "Engram runs BERT models from safetensors checkpoints on the CPU and the GPU.",
            "Hello!",
            "A quick brown fox jumps over the lazy dog, twice.",
        ];
        let batch = tok.encode(&sentences).unwrap();
        let hidden = bert.encode(&Tape::inference(), &batch, false).unwrap();
        assert_eq!(hidden.device(), Device::Cuda);
        let (got, want) = (hidden.to_f64_vec(), r["last_hidden_state"].to_f64_vec());
        let max_abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("MiniLM on the GPU: max |engram − transformers| = {max_abs:e} over {} values", got.len());
        assert!(max_abs <= 1e-3, "max abs difference {max_abs:e} > 1e-3");
    }
}

/// `engram finetune` itself on the GPU against the CPU: the trainer's whole device path (batches
/// moved to the GPU, dropout with the same masks, clipping by the f64 Σg² kernel, AdamW and SGD
/// with momentum on the device, gradient accumulation, frozen backbone, recurrent memory
/// segments, evaluation, the saved model) on tiny-bert and the tiny fixtures.
#[cfg(feature = "cuda")]
mod gpu_trainer {
    use std::path::{Path, PathBuf};

    use engram::memory::MemoryConfig;
    use engram::models::bert::weights::read_safetensors;
    use engram::testing::assert_close;
    use engram::train::trainer::Summary;
    use engram::train::{finetune, FinetuneArgs, OptimizerKind, Task};
    use engram::Device;

    use super::gpu::gpu;
    use crate::common::root;

    fn run(name: &str, task: Task, base: &FinetuneArgs, device: Device) -> (Summary, PathBuf) {
        let out = std::env::temp_dir().join(format!("engram-gpu-trainer-{}-{name}-{device:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut a = base.clone();
        a.task = task;
        a.out = out.clone();
        a.device = device;
        let s = finetune(&a).unwrap_or_else(|e| panic!("{name} on {device:?}: {e}"));
        (s, out)
    }

    fn epoch_losses(dir: &Path) -> Vec<f64> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
        m["epochs"].as_array().unwrap().iter().map(|e| e["train_loss"].as_f64().unwrap()).collect()
    }

    #[test]
    fn finetune_on_the_gpu_matches_the_cpu() {
        if !gpu("finetune on the GPU") {
            return;
        }
        let data = root().join("tests/fixtures/data");
        let model = root().join("weights/tiny-bert");
        let csv = |f: &str| data.join(f);
        let mut cases: Vec<(&str, Task, FinetuneArgs)> = Vec::new();
        let mut a = FinetuneArgs::new(model.clone(), Task::Classify, csv("tiny_train.csv"), csv("tiny_dev.csv"), PathBuf::new());
        a.lr = 1e-3;
        a.epochs = 2;
        a.batch_size = 4;
        a.grad_accum = 2;
        a.warmup_ratio = 0.1;
        a.max_length = 16;
        a.progress = false;
        cases.push(("classify-adamw-accum", Task::Classify, a.clone()));
        let mut sgd = a.clone();
        sgd.optimizer = OptimizerKind::Sgd;
        sgd.lr = 0.05;
        sgd.grad_accum = 1;
        cases.push(("classify-sgd", Task::Classify, sgd));
        let mut frozen = a.clone();
        frozen.freeze_backbone = true;
        cases.push(("classify-frozen", Task::Classify, frozen));
        let mut mem = a.clone();
        mem.memory = Some(MemoryConfig::memory(2, 4, None));
        mem.max_length = 64;
        cases.push(("classify-memory", Task::Classify, mem.clone()));
        let mut ner = a.clone();
        ner.train = csv("tiny_train.conll");
        ner.dev = csv("tiny_dev.conll");
        ner.metric = "entity_f1".into();
        cases.push(("ner", Task::Ner, ner.clone()));
        // Sentences longer than a 6-token window, read as overlapping windows (--stride).
        let mut windows = ner.clone();
        (windows.max_length, windows.stride) = (6, Some(2));
        cases.push(("ner-stride", Task::Ner, windows));
        // Class-weighted cross-entropy with label smoothing (the weighted kernels), NER.
        let mut weighted = ner.clone();
        (weighted.class_weights, weighted.label_smoothing) = (Some(engram::train::ClassWeights::Balanced), 0.1);
        cases.push(("ner-class-weights", Task::Ner, weighted));
        // Multi-label (BCE; each row's one label read as a label set) over memory segments, and
        // regression (MSE) on scores made from the same rows.
        let mut multi = mem.clone();
        multi.metric = "micro_f1".into();
        cases.push(("multilabel-memory", Task::Multilabel, multi.clone()));
        // Multi-label with positive weights (the pos_weight BCE kernels).
        let mut weighted = multi;
        (weighted.memory, weighted.max_length, weighted.class_weights) = (None, 16, Some("neg=3.5,pos=0.5".parse().unwrap()));
        cases.push(("multilabel-pos-weight", Task::Multilabel, weighted));
        let scores = std::env::temp_dir().join(format!("engram-cuda-scores-{}", std::process::id()));
        std::fs::create_dir_all(&scores).unwrap();
        for f in ["tiny_train.csv", "tiny_dev.csv"] {
            let text = std::fs::read_to_string(csv(f)).unwrap();
            let rows: String = text.lines().enumerate().map(|(i, l)| match i {
                0 => "text,label\n".to_string(),
                _ => {
                    let (t, lab) = l.rsplit_once(',').unwrap();
                    format!("{t},{}\n", if lab == "pos" { 1.5 } else { -0.5 } + (i % 3) as f64 * 0.1)
                }
            }).collect();
            std::fs::write(scores.join(f), rows).unwrap();
        }
        let mut reg = a.clone();
        (reg.train, reg.dev, reg.metric) = (scores.join("tiny_train.csv"), scores.join("tiny_dev.csv"), "pearson".into());
        cases.push(("regression", Task::Regression, reg));
        // bf16 autocast (`--bf16`): the linear layers' GEMMs in the bf16 tensor-core kernel.
        let mut bf16 = a.clone();
        bf16.bf16 = true;
        cases.push(("classify-bf16", Task::Classify, bf16));
        // Gradient checkpointing: the layers rerun in backward on the device.
        let mut ckpt = a.clone();
        ckpt.gradient_checkpointing = true;
        cases.push(("classify-checkpointing", Task::Classify, ckpt));

        for (name, task, args) in &cases {
            let (sc, oc) = run(name, *task, args, Device::Cpu);
            let (sg, og) = run(name, *task, args, Device::Cuda);
            assert_eq!(sg.epochs_run, sc.epochs_run, "{name}: epochs");
            assert_eq!(sg.global_step, sc.global_step, "{name}: optimizer steps");
            let (lc, lg) = (epoch_losses(&oc), epoch_losses(&og));
            eprintln!("{name}: train loss per epoch cpu {lc:?} cuda {lg:?}; best {} cpu {} cuda {}", sc.metric, sc.best_metric, sg.best_metric);
            assert_close(&format!("{name}: train loss per epoch"), &lg, &lc, 1e-4, 1e-3);
            // Counts (accuracy, F1) agree exactly; a correlation of the scores to float rounding.
            let tol = if sc.metric == "pearson" { 1e-3 } else { 1e-9 };
            assert!((sg.best_metric - sc.best_metric).abs() <= tol, "{name}: best dev {} cuda {} vs cpu {}", sc.metric, sg.best_metric, sc.best_metric);
            // The saved (best) models: every tensor, after all the steps.
            let (wc, wg) = (read_safetensors(oc.join("model.safetensors")).unwrap(), read_safetensors(og.join("model.safetensors")).unwrap());
            assert_eq!(wc.len(), wg.len(), "{name}: saved tensors");
            let mut worst = 0.0f64;
            for (k, t) in &wc {
                let g = wg.get(k).unwrap_or_else(|| panic!("{name}: {k} missing from the GPU-trained model"));
                let (x, y) = (g.to_f64_vec(), t.to_f64_vec());
                worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(worst, f64::max);
                assert_close(&format!("{name}: saved {k}"), &x, &y, 1e-4, 1e-3);
            }
            // The comparison means something only if training moved the weights (and a frozen
            // backbone must not move on either device).
            let init = read_safetensors(model.join("model.safetensors")).unwrap();
            let moved = |w: &std::collections::BTreeMap<String, engram::Tensor>| {
                init.iter()
                    .filter(|(k, _)| !k.starts_with("classifier."))
                    .filter_map(|(k, t)| Some((w.get(k)?, t)))
                    .map(|(a, b)| a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
                    .fold(0.0, f64::max)
            };
            let (mc, mg) = (moved(&wc), moved(&wg));
            eprintln!("{name}: saved weights max |cuda − cpu| = {worst:e}; backbone moved by up to {mc:e} (cpu) {mg:e} (cuda)");
            if args.freeze_backbone {
                assert!(mc == 0.0 && mg == 0.0, "{name}: the frozen backbone moved (cpu {mc:e}, cuda {mg:e})");
            } else {
                assert!(mc > 1e-4, "{name}: training barely moved the weights ({mc:e}); the comparison would prove nothing");
            }
            let _ = std::fs::remove_dir_all(&oc);
            let _ = std::fs::remove_dir_all(&og);
        }
    }
}

//! CPU matmul throughput through `ops::linear` exactly as a BERT layer calls it: forward at
//! BERT-base shapes (batch 32 × seq 128 = 4096 tokens, hidden 768, intermediate 3072), and
//! forward + backward (x·wᵀ, dy·w, dyᵀ·x — all three operand layouts the GEMM packs) at the
//! all-MiniLM-L6-v2 fine-tuning shapes (1,280 tokens, hidden 384, intermediate 1536).
//! Criterion's "elem/s" is set to FLOP/s (2·M·N·K per GEMM), so "Gelem/s" reads as GFLOP/s.
//! `linear_int8_vs_f32` runs `ops::linear_int8` (activation quantization, the integer kernel and
//! the f32 epilogue; elem/s = 2·M·N·K integer ops) beside `ops::linear` (with its packed weight,
//! as inference keeps it) at MiniLM and BERT-base inference shapes, in the same run.
//!
//! `linear_bf16_vs_f32` runs `ops::linear` on an f32 tape and on a bf16-autocast tape
//! (`Tape::bf16`, the `--bf16` of the CLI), training (forward + both backward GEMMs) and inference.
//!
//!     cargo bench --bench matmul [-- int8 | bf16]
//!     ENGRAM_GEMM_BF16=portable cargo bench --bench matmul -- bf16   # the portable bf16 kernel
//!     ENGRAM_INT8_KERNEL=avxvnni|avx2|portable cargo bench --bench matmul -- int8   # another int8 kernel

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram::testing::Rng;
use engram::{ops, Tape, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n).into_iter().map(|x| x as f32).collect::<Vec<f32>>(), shape).unwrap()
}

fn bench(c: &mut Criterion) {
    // As the CLI does: without it, every 50 MB output of the 4096×3072 shape was a fresh mapping,
    // page-faulted in and unmapped again (TLB shootdowns: a third of that row's time in the kernel).
    engram::util::tune_allocator();
    let mut g = c.benchmark_group("linear_f32");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    // (M tokens, N out features, K in features): QKV/attention-output, FFN up, FFN down.
    for &(m, n, k) in &[(4096, 768, 768), (4096, 3072, 768), (4096, 768, 3072), (128, 768, 768)] {
        let x = randn(&[m, k], 1);
        let w = randn(&[n, k], 2);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{m}x{n}x{k}")), &(x, w), |b, (x, w)| {
            let tape = Tape::inference();
            b.iter(|| black_box(ops::linear(&tape, x, w, None).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("linear_f32_fwd_bwd");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    for &(m, n, k) in &[(1280, 384, 384), (1280, 1536, 384), (1280, 384, 1536)] {
        let x = randn(&[m, k], 1).requires_grad();
        let w = randn(&[n, k], 2).requires_grad();
        let dy = randn(&[m, n], 3);
        g.throughput(Throughput::Elements((3 * 2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{m}x{n}x{k}")), &(x, w, dy), |b, (x, w, dy)| {
            b.iter(|| {
                let tape = Tape::training(1);
                let y = ops::linear(&tape, x, w, None).unwrap();
                black_box(tape.backward_with(&y, dy).unwrap())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("linear_int8_vs_f32");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for &(m, n, k) in &[(4096, 384, 384), (4096, 1536, 384), (4096, 384, 1536), (128, 384, 384), (4096, 3072, 768)] {
        let x = randn(&[m, k], 1);
        let w = randn(&[n, k], 2);
        let q = ops::Int8Weight::quantize(&w).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("f32", format!("{m}x{n}x{k}")), &(&x, &w), |b, (x, w)| {
            let tape = Tape::inference();
            b.iter(|| black_box(ops::linear(&tape, x, w, None).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("int8", format!("{m}x{n}x{k}")), &(&x, &q), |b, (x, q)| {
            let tape = Tape::inference();
            b.iter(|| black_box(ops::linear_int8(&tape, x, q, None).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("linear_bf16_vs_f32");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for &(m, n, k) in &[(1280, 384, 384), (1280, 1536, 384), (1280, 384, 1536), (4096, 3072, 768)] {
        let x = randn(&[m, k], 1).requires_grad();
        let w = randn(&[n, k], 2).requires_grad();
        let dy = randn(&[m, n], 3);
        g.throughput(Throughput::Elements((3 * 2 * m * n * k) as u64));
        for bf16 in [false, true] {
            let name = if bf16 { "bf16_fwd_bwd" } else { "f32_fwd_bwd" };
            g.bench_with_input(BenchmarkId::new(name, format!("{m}x{n}x{k}")), &(&x, &w, &dy), |b, (x, w, dy)| {
                b.iter(|| {
                    let tape = Tape::training(1).bf16(bf16);
                    let y = ops::linear(&tape, x, w, None).unwrap();
                    black_box(tape.backward_with(&y, dy).unwrap())
                })
            });
        }
        let (xi, wi) = (x.detach(), w.detach());
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for bf16 in [false, true] {
            let name = if bf16 { "bf16_inference" } else { "f32_inference" };
            g.bench_with_input(BenchmarkId::new(name, format!("{m}x{n}x{k}")), &(&xi, &wi), |b, (x, w)| {
                let tape = Tape::inference().bf16(bf16);
                b.iter(|| black_box(ops::linear(&tape, x, w, None).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! End-to-end CPU cost of the real all-MiniLM-L6-v2 (+ a 2-label sequence-classification head) at
//! sequence length 128: inference at batch 1 and 32, and one full fine-tuning step at batch 32
//! (forward with dropout, cross-entropy, backward, grad-norm clip 1.0, AdamW), and inference at
//! batch 1 and 32 with the encoder's linear layers in int8 (`Bert::quantize_int8`), and inference
//! at batch 32 and the training step with bf16 autocast (`Tape::bf16`, the CLI's `--bf16`), and the
//! step with gradient checkpointing (`Tape::checkpointing`) with the peak memory of both. Median of the
//! repetitions after one warm-up. The peer is PyTorch on the same machine in the same run:
//! `scripts/cpu-vs-torch.sh` runs this and `scripts/bench_cpu_torch.py` and prints the ratios.
//!
//!   cargo bench --bench bert_cpu [-- --json out.json] [--reps N] [--only ROW-SUBSTRING, e.g. "inference" or "train"]
//!                                    [--profile: after timing, one more run of each row with a per-op table]
//!
//! Falls back to the committed tiny BERT when the real weights are not installed (the numbers are
//! then only a smoke run); ENGRAM_MODEL_DIR picks another model.

use std::path::PathBuf;
use std::time::Instant;

use engram::util::on_pool;
use engram::data::BertTokenizer;
use engram::models::bert::{Bert, Head};
use engram::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig};
use engram::{ops, Tape, Tensor};

/// Sequence length (cut to the model's max_position_embeddings for the tiny smoke model).
const SEQ_MAX: usize = 128;

/// The system allocator, counting live heap bytes and their peak (so a step's memory is measured
/// exactly, whatever the allocator keeps resident between steps).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        let q = unsafe { std::alloc::System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
            let now = LIVE.fetch_add(new, std::sync::atomic::Ordering::Relaxed) + new;
            PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// MB of heap that running `f` holds at its peak beyond what was live before it.
fn step_peak_mb(f: impl FnOnce()) -> f64 {
    use std::sync::atomic::Ordering::Relaxed;
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    f();
    (PEAK.load(Relaxed) - before) as f64 / (1 << 20) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: first-touch page faults, rayon start-up
    median((0..reps).map(|_| {
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64() * 1e3
    }).collect())
}

fn main() {
    engram::util::tune_allocator(); // as the CLI does
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = opt("--reps").map(|s| s.parse().expect("--reps N")).unwrap_or(5);
    let only = opt("--only").unwrap_or_default();
    let run = |row: &str| row.contains(only.as_str());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = engram::testing::bench_model_dir(&root);
    let (mut bert, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 2 }, 0).expect("model");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json")).expect("config.json");
    let seq = SEQ_MAX.min(config["max_position_embeddings"].as_u64().map_or(SEQ_MAX, |v| v as usize));
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), seq).expect("tokenizer");
    // Real text, long enough that every row is cut to exactly `seq` tokens (no padding).
    let text = "the film is a quiet, patient study of grief and of the small kindnesses that get people through it, ".repeat(12);
    let batch_of = |b: usize| {
        let texts: Vec<&str> = (0..b).map(|_| text.as_str()).collect();
        let batch = tok.encode(&texts).expect("tokenize");
        assert_eq!(batch.input_ids.shape(), [b, seq]);
        batch
    };
    let (b1, b32) = (batch_of(1), batch_of(32));
    let y = Tensor::from_ids((0..32).map(|i| i % 2).collect(), &[32]).expect("labels");
    println!("engram CPU, {} ({} threads), sequence length {seq}, median of {reps}", dir.display(), rayon::current_num_threads());

    let quantized = (run("int8 inference, batch 1") || run("int8 inference, batch 32")).then(|| {
        let (mut q, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 2 }, 0).expect("model");
        q.quantize_int8().expect("quantize");
        q
    });
    let profile = args.iter().any(|a| a == "--profile");
    let show = |row: &str, profile: Option<engram::autograd::Profile>, extra: &[(&str, f64)]| {
        if let Some(p) = profile {
            println!("\n-- per-op time, {row} (one run) --\n{p}");
            for (name, ms) in extra {
                println!("{name:<18} {ms:>46.1}");
            }
        }
    };
    let infer_with = |tape: &Tape, b: &engram::data::Batch| {
        std::hint::black_box(bert.logits(tape, b, false).expect("forward"));
    };
    // Inference rows run as `predict`, `eval` and `embed` do: on a worker of the thread pool
    // (`util::on_pool`), so the ops' parallel loops start there rather than from outside it.
    let infer = |b: &engram::data::Batch| on_pool(|| infer_with(&Tape::inference(), b));
    let infer_1 = if run("inference, batch 1") { time(reps, || infer(&b1)) } else { f64::NAN };
    let infer_32 = if run("inference, batch 32") { time(reps, || infer(&b32)) } else { f64::NAN };
    let int8_with = |tape: &Tape, b: &engram::data::Batch| {
        std::hint::black_box(quantized.as_ref().expect("int8 model").logits(tape, b, false).expect("forward"));
    };
    let int8_1 = if run("int8 inference, batch 1") { time(reps, || on_pool(|| int8_with(&Tape::inference(), &b1))) } else { f64::NAN };
    let int8_32 = if run("int8 inference, batch 32") { time(reps, || on_pool(|| int8_with(&Tape::inference(), &b32))) } else { f64::NAN };
    // A model of its own: inference keeps one packed copy of each weight, f32 or bf16.
    let bf16_32 = if run("bf16 inference, batch 32") {
        let (b16, _) = Bert::load_with(&dir, Head::SequenceClassification { num_labels: 2 }, 0, engram::models::bert::Precision::Bf16).expect("model");
        let ms = time(reps, || {
            on_pool(|| std::hint::black_box(b16.logits(&b16.inference_tape(), &b32, false).expect("forward")));
        });
        if profile {
            let tape = b16.inference_tape().profiled();
            std::hint::black_box(b16.logits(&tape, &b32, false).expect("forward"));
            show("bf16 inference, batch 32", tape.profile(), &[]);
        }
        ms
    } else {
        f64::NAN
    };
    if profile {
        for (row, b) in [("inference, batch 1", &b1), ("inference, batch 32", &b32)] {
            if run(row) {
                // On a pool worker, as the timed rows.
                let p = on_pool(|| {
                    let tape = Tape::inference().profiled();
                    infer_with(&tape, b);
                    tape.profile()
                });
                show(row, p, &[]);
            }
        }
        for (row, b) in [("int8 inference, batch 1", &b1), ("int8 inference, batch 32", &b32)] {
            if run(row) {
                let p = on_pool(|| {
                    let tape = Tape::inference().profiled();
                    int8_with(&tape, b);
                    tape.profile()
                });
                show(row, p, &[]);
            }
        }
    }
    let mut opt_state = AdamW::new(AdamWConfig::default());
    let mut step = 0u64;
    let mut train = |profiled: bool, bf16: bool, ckpt: bool| {
        step += 1;
        let tape = Tape::training(step).bf16(bf16).checkpointing(ckpt);
        let tape = if profiled { tape.profiled() } else { tape };
        let logits = bert.logits(&tape, &b32, true).expect("forward");
        let loss = ops::cross_entropy(&tape, &logits, &y).expect("loss");
        let mut grads = tape.backward(&loss).expect("backward");
        let t_opt = std::time::Instant::now();
        let trainable: Vec<&Tensor> = bert.params.values().filter(|t| t.is_tracked()).collect();
        clip_grad_norm(&mut grads, &trainable, 1.0).expect("clip");
        let named: Vec<(String, &mut Tensor)> =
            bert.params.iter_mut().filter(|(_, t)| t.is_tracked()).map(|(k, v)| (k.clone(), v)).collect();
        let mut groups = hf_param_groups(named, 0.01);
        opt_state.step(&mut groups, &grads, 1e-5).expect("adamw");
        let row = match (bf16, ckpt) {
            (true, _) => "bf16 train step, batch 32",
            (false, true) => "checkpointed train step, b32",
            (false, false) => "train step, batch 32",
        };
        show(row, tape.profile(), &[("clip + AdamW", t_opt.elapsed().as_secs_f64() * 1e3)]);
    };
    let train_32 = if !run("train step, batch 32") { f64::NAN } else { time(reps, || train(false, false, false)) };
    let bf16_train_32 = if !run("bf16 train step, batch 32") { f64::NAN } else { time(reps, || train(false, true, false)) };
    let ckpt_train_32 = if !run("checkpointed train step, b32") { f64::NAN } else { time(reps, || train(false, false, true)) };
    if profile && run("train step, batch 32") {
        train(true, false, false);
    }
    if profile && run("bf16 train step, batch 32") {
        train(true, true, false);
    }
    // The heap a step holds at its peak beyond the model and optimizer state: activations and
    // gradients, with and without gradient checkpointing.
    if run("checkpointed train step, b32") {
        let (plain, ckpt) = (step_peak_mb(|| train(false, false, false)), step_peak_mb(|| train(false, false, true)));
        println!("train step peak heap beyond the model: {plain:.0} MB plain, {ckpt:.0} MB with gradient checkpointing");
    }
    let rows = [
        ("inference, batch 1", infer_1),
        ("inference, batch 32", infer_32),
        ("train step, batch 32", train_32),
        ("int8 inference, batch 1", int8_1),
        ("int8 inference, batch 32", int8_32),
        ("bf16 inference, batch 32", bf16_32),
        ("bf16 train step, batch 32", bf16_train_32),
        ("checkpointed train step, b32", ckpt_train_32),
    ];
    for (name, ms) in rows {
        println!("{name:<26} {ms:9.1} ms");
    }
    if let Some(path) = opt("--json") {
        let body: Vec<String> = rows.iter().map(|(n, ms)| format!("\"{n}\": {ms:.3}")).collect();
        std::fs::write(&path, format!("{{{}}}\n", body.join(", "))).expect("write --json");
    }
}

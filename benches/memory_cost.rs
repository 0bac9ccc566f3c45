//! Cost of the recurrent memory per document against its length: one training step's forward
//! and backward over documents 1×, 2×, 4× and 8× the window, timed (median of 3) and with the
//! bytes the tape holds for backward (parameters included), and the same with gradient
//! checkpointing (`Tape::checkpointing`). Linear growth in both is the claim; the ratio columns
//! compare each length with 1×.
//!
//!   cargo bench --bench memory_cost                        # all-MiniLM-L6-v2 if installed, else the tiny BERT
//!   ENGRAM_MODEL_DIR=path cargo bench --bench memory_cost  # another model
//!
//! Window 64 (4 memory tokens + 58 text tokens + [CLS]/[SEP]), batch 4 documents, on the CPU.

use std::path::PathBuf;
use std::time::Instant;

use engram::data::BertTokenizer;
use engram::memory::{self, recall, MemoryConfig};
use engram::models::bert::{Bert, Head};
use engram::util::Rng;
use engram::Tape;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = engram::testing::bench_model_dir(&root);
    let (window, m, batch) = (64usize, 4usize, 4usize);
    let cfg = MemoryConfig::memory(m, window - m - 2, None);
    let (mut bert, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 2 }, 0).expect("model");
    memory::attach(&mut bert, &cfg, &dir, 0).expect("memory");
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), window).expect("tokenizer");
    println!("memory cost per document: {} (window {window}, m = {m}), batch {batch}, CPU", dir.display());
    println!("| length | segments | tokens/doc | ms/doc (fwd+bwd) | × of 1× | tape MiB/doc | × of 1× | checkpointed: ms/doc | tape MiB/doc |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut base: Option<(f64, f64)> = None;
    for factor in [1usize, 2, 4, 8] {
        let mut rng = Rng::new(factor as u64);
        let docs: Vec<Vec<memory::Unit>> =
            (0..batch).map(|_| memory::units(&tok, &recall::document(&mut rng, factor * window).0, None).expect("units")).collect();
        let seg = memory::segment(&tok, &cfg, &docs, "bench").expect("segments");
        let y = engram::Tensor::from_ids(vec![0; batch], &[batch]).expect("labels");
        // (ms per document, tape MiB per document), median of 3, without and with checkpointing.
        let measure = |ckpt: bool| {
            let mut times = Vec::new();
            let mut held = 0;
            for rep in 0..3 {
                let t0 = Instant::now();
                let tape = Tape::training(rep).checkpointing(ckpt);
                let out = memory::forward(&bert, &cfg, &tape, &seg, true, false).expect("forward");
                let loss = engram::ops::cross_entropy(&tape, &out.logits, &y).expect("loss");
                held = tape.held_bytes();
                let _g = tape.backward(&loss).expect("backward");
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            (times[1] * 1e3 / batch as f64, held as f64 / batch as f64 / (1 << 20) as f64)
        };
        let (ms, mib) = measure(false);
        let (ck_ms, ck_mib) = measure(true);
        let (b_ms, b_mib) = *base.get_or_insert((ms, mib));
        println!(
            "| {factor}× | {} | {} | {ms:.1} | {:.2} | {mib:.1} | {:.2} | {ck_ms:.1} | {ck_mib:.1} |",
            seg.steps.len(),
            seg.tokens / batch,
            ms / b_ms,
            mib / b_mib
        );
    }
}

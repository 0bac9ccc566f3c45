//! engram as a library: load a fine-tuned model once, then classify (or tag) texts in a loop —
//! what an application embedding engram does instead of running the CLI per request.
//!
//!   cargo run --release --example predict -- runs/rt-minilm "a gripping, funny film" "a dull mess"
//!
//! Reads further texts from stdin, one per line, when none are given. Prints JSONL, as
//! `engram predict` does.

use std::io::BufRead;

use engram::train::{PredictOptions, Predictor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: predict MODEL_DIR [TEXT...]")?;
    let model = Predictor::load(dir.as_ref(), PredictOptions::default())?;
    eprintln!("{dir}: {:?}, labels {:?}", model.task(), model.labels());
    let texts: Vec<String> = args.collect();
    if !texts.is_empty() {
        for p in model.predict(&texts)? {
            println!("{}", serde_json::to_string(&p)?);
        }
        return Ok(());
    }
    for line in std::io::stdin().lock().lines() {
        for p in model.predict(&[line?])? {
            // Typed: p.output is Output::Label { label, probs }, Output::Tags { .. }, ...
            println!("{}", serde_json::to_string(&p)?);
        }
    }
    Ok(())
}

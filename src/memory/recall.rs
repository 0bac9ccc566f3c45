//! The long-range recall benchmark, generated deterministically (no external data).
//!
//! Documents: a fact in the first sentence ("record : the secret code is red ."), then distractor
//! sentences, then a question in the last sentence ("question : is the secret code blue ?").
//! The label (`true`/`false`) is whether the question names the recorded value, so it needs both
//! ends of the document: truncation to the window sees the fact but not the question (or, cut
//! from the left, the question but not the fact), and chunk-and-average classifies chunks that
//! each see at most one of them — an additive vote cannot compute equality, so both stay near
//! chance by construction. A memory model has to carry the value across every segment.
//!
//! Dialogues: the first turn states the user's name ("user : hi , my name is anna ."), chit-chat
//! turns follow (one per line), and the candidate response (`text_pair`) says goodbye to a name;
//! the label is `coherent` when it is the user's name, else `incoherent`.
//!
//! Lengths are counted in words; the vocabulary is common English words that are single
//! WordPiece tokens in BERT's uncased vocabulary, so words ≈ tokens.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::util::{write_atomic, Rng};

const VALUES: [&str; 8] = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"];
const NAMES: [&str; 8] = ["anna", "john", "maria", "peter", "lucy", "james", "sarah", "paul"];
const SUBJECTS: [&str; 12] = [
    "the farmer", "the teacher", "a driver", "the doctor", "my neighbor", "the old man", "a student", "the baker", "the pilot",
    "our manager", "the young woman", "his brother",
];
const VERBS: [&str; 12] = ["visited", "painted", "repaired", "cleaned", "watched", "ordered", "carried", "opened", "described", "borrowed", "found", "sold"];
const OBJECTS: [&str; 12] = [
    "the house", "a small boat", "the window", "the garden", "an old chair", "the kitchen", "the bridge", "a new book", "the station",
    "the market", "a heavy box", "the church",
];
const TAILS: [&str; 12] = [
    "in the morning", "after lunch", "near the river", "before the storm", "with great care", "on monday", "during the festival",
    "without a word", "at the edge of town", "for the second time", "late at night", "in the rain",
];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

fn sentence(rng: &mut Rng) -> String {
    format!("{} {} {} {} .", pick(rng, &SUBJECTS), pick(rng, &VERBS), pick(rng, &OBJECTS), pick(rng, &TAILS))
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// The value asked about: the recorded one for a positive example, another one otherwise.
fn asked<'a>(rng: &mut Rng, xs: &[&'a str], truth: &'a str, positive: bool) -> &'a str {
    if positive {
        return truth;
    }
    loop {
        let v = pick(rng, xs);
        if v != truth {
            return v;
        }
    }
}

/// One recall document of about `len` words and its label.
pub fn document(rng: &mut Rng, len: usize) -> (String, &'static str) {
    let value = pick(rng, &VALUES);
    let positive = rng.below(2) == 1;
    let question = format!("question : is the secret code {} ?", asked(rng, &VALUES, value, positive));
    let mut text = format!("record : the secret code is {value} .");
    loop {
        let s = sentence(rng);
        if words(&text) + words(&s) + words(&question) > len {
            break;
        }
        text.push(' ');
        text.push_str(&s);
    }
    text.push(' ');
    text.push_str(&question);
    (text, if positive { "true" } else { "false" })
}

/// One dialogue of about `len` words: history (one turn per line), candidate response, label.
pub fn dialogue(rng: &mut Rng, len: usize) -> (String, String, &'static str) {
    let name = pick(rng, &NAMES);
    let positive = rng.below(2) == 1;
    let response = format!("bot : goodbye , {} , have a nice day .", asked(rng, &NAMES, name, positive));
    let mut turns = vec![format!("user : hi , my name is {name} ."), "bot : nice to meet you .".to_string()];
    let mut n = turns.iter().map(|t| words(t)).sum::<usize>() + words(&response);
    let mut user = true;
    loop {
        let t = format!("{} : {}", if user { "user" } else { "bot" }, sentence(rng));
        if n + words(&t) > len {
            break;
        }
        n += words(&t);
        turns.push(t);
        user = !user;
    }
    (turns.join("\n"), response, if positive { "coherent" } else { "incoherent" })
}

/// Write `train.jsonl`, `dev.jsonl`, `test.jsonl` of documents (or dialogues) of about
/// `len` words into `out`. Deterministic in `seed`.
pub fn write(out: &Path, dialogue_variant: bool, len: usize, sizes: [usize; 3], seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::File { path: out.display().to_string(), detail: format!("cannot create: {e}") })?;
    for (i, (name, n)) in ["train", "dev", "test"].iter().zip(sizes).enumerate() {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64 + 1));
        let mut buf = Vec::new();
        for _ in 0..n {
            let row = if dialogue_variant {
                let (text, pair, label) = dialogue(&mut rng, len);
                serde_json::json!({ "text": text, "text_pair": pair, "label": label })
            } else {
                let (text, label) = document(&mut rng, len);
                serde_json::json!({ "text": text, "label": label })
            };
            writeln!(buf, "{row}").expect("writing to memory");
        }
        write_atomic(&out.join(format!("{name}.jsonl")), &buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_balanced_and_put_fact_and_question_at_the_ends() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let docs: Vec<_> = (0..200).map(|_| document(&mut a, 256)).collect();
        assert_eq!(docs, (0..200).map(|_| document(&mut b, 256)).collect::<Vec<_>>());
        let pos = docs.iter().filter(|d| d.1 == "true").count();
        assert!((70..130).contains(&pos), "{pos} positives of 200");
        for (text, label) in &docs {
            let w: Vec<&str> = text.split_whitespace().collect();
            assert!(w.len() <= 256 && w.len() > 240, "{} words", w.len());
            assert_eq!(&w[..5], &["record", ":", "the", "secret", "code"]);
            let (fact, asked) = (w[6], w[w.len() - 2]);
            assert_eq!(*label == "true", fact == asked);
            // The values occur nowhere else: the distractors carry no evidence.
            assert_eq!(w.iter().filter(|x| VALUES.contains(x)).count(), 2);
        }
        let (hist, resp, label) = dialogue(&mut a, 128);
        assert!(hist.lines().count() > 4 && hist.starts_with("user : hi , my name is"));
        let name = hist.split_whitespace().nth(6).unwrap();
        assert_eq!(label == "coherent", resp.contains(&format!(" {name} ")));
    }
}

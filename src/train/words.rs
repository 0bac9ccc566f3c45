//! Token classification between words and sub-tokens. The model tags sub-tokens; data and
//! reports speak of words. Training labels a word's first sub-token (transformers' `run_ner.py`
//! default) or, with `--label-all-tokens`, every sub-token, the later ones with the word's `I-`
//! tag where its tag is `B-` (run_ner's `label_all_tokens`, `b_to_i_label`). Reading a word's tag
//! back goes through an [`Aggregation`] of its sub-tokens' predictions: the token-classification
//! pipeline's `aggregation_strategy` `first`, `average` or `max`.

use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::tokenize::Batch;

/// How a word's tag comes from its sub-tokens' predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The first sub-token's tag and its probability (what training labels by default).
    #[default]
    First,
    /// The tag with the highest probability averaged over the word's sub-tokens.
    Average,
    /// The tag of the sub-token whose best probability is the highest.
    Max,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::First => "first",
            Aggregation::Average => "average",
            Aggregation::Max => "max",
        }
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "first" => Ok(Aggregation::First),
            "average" => Ok(Aggregation::Average),
            "max" => Ok(Aggregation::Max),
            _ => Err(format!("unknown aggregation \"{s}\" (first, average or max)")),
        }
    }
}

/// How token classification reads its inputs: long ones in overlapping windows (`stride`, see
/// `windows`; `None` truncates), and each word's tag from its sub-tokens (`aggregation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagOptions {
    pub stride: Option<usize>,
    pub aggregation: Aggregation,
}

impl TagOptions {
    pub fn stride(stride: Option<usize>) -> Self {
        TagOptions { stride, aggregation: Aggregation::First }
    }
}

/// Each word's tag (an index into the labels) and its probability, for the `n_words` words of
/// row `b`, from the row's logits (`(batch, seq_len, n_labels)` flattened); None for a word
/// with no sub-token in the window (cut off by truncation).
pub fn word_tags(batch: &Batch, logits: &[f64], b: usize, n_words: usize, n_labels: usize, agg: Aggregation) -> Vec<Option<(usize, f64)>> {
    let t = batch.seq_len();
    // Per word: (sum of probabilities, sub-tokens seen) for `average`; the chosen (tag, prob)
    // for `first` and `max`.
    let mut sums: Vec<(Vec<f64>, usize)> = if agg == Aggregation::Average { vec![(vec![0.0; n_labels], 0); n_words] } else { Vec::new() };
    let mut out: Vec<Option<(usize, f64)>> = vec![None; n_words];
    for (i, w) in batch.word_ids[b].iter().enumerate() {
        let Some(w) = w.map(|w| w as usize).filter(|&w| w < n_words) else { continue };
        let row = &logits[(b * t + i) * n_labels..][..n_labels];
        match agg {
            Aggregation::First if out[w].is_none() => out[w] = Some(best(row)),
            Aggregation::First => {}
            Aggregation::Max => {
                let cand = best(row);
                // The first sub-token wins ties, as numpy's argmax does in the pipeline.
                if out[w].is_none_or(|(_, p)| cand.1 > p) {
                    out[w] = Some(cand);
                }
            }
            Aggregation::Average => {
                let (sum, n) = &mut sums[w];
                for (s, p) in sum.iter_mut().zip(softmax(row)) {
                    *s += p;
                }
                *n += 1;
            }
        }
    }
    if agg == Aggregation::Average {
        for (slot, (sum, n)) in out.iter_mut().zip(sums) {
            if n > 0 {
                let (k, s) = sum.iter().enumerate().fold((0, f64::NEG_INFINITY), |acc, (k, &s)| if s > acc.1 { (k, s) } else { acc });
                *slot = Some((k, s / n as f64));
            }
        }
    }
    out
}

/// The arg-max of a row of logits (first on ties) and its softmax probability.
fn best(row: &[f64]) -> (usize, f64) {
    let (k, top) = row.iter().enumerate().fold((0, f64::NEG_INFINITY), |acc, (k, &x)| if x > acc.1 { (k, x) } else { acc });
    (k, 1.0 / row.iter().map(|x| (x - top).exp()).sum::<f64>())
}

fn softmax(row: &[f64]) -> impl Iterator<Item = f64> + '_ {
    let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|x| (x - top).exp()).sum();
    row.iter().map(move |x| (x - top).exp() / z)
}

/// The label a word's later sub-tokens train on under `--label-all-tokens`: `I-X` for a `B-X`
/// tag when the labels have `I-X`, the tag itself otherwise (run_ner's `b_to_i_label`).
pub fn inside_labels(labels: &HashMap<String, usize>) -> HashMap<usize, usize> {
    labels
        .iter()
        .map(|(l, &i)| {
            let inside = l.strip_prefix("B-").and_then(|ty| labels.get(&format!("I-{ty}"))).copied();
            (i, inside.unwrap_or(i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    /// A one-row batch whose tokens belong to `words` (None: a special token).
    fn batch(words: &[Option<u32>]) -> Batch {
        let t = words.len();
        let ids = Tensor::from_ids(vec![0; t], &[1, t]).unwrap();
        Batch {
            input_ids: ids.clone(),
            token_type_ids: ids.clone(),
            attention_mask: ids,
            offsets: vec![vec![(0, 0); t]],
            word_ids: vec![words.to_vec()],
            sequence_ids: vec![vec![None; t]],
            truncated: vec![false],
        }
    }

    fn probs(row: &[f64]) -> Vec<f64> {
        softmax(row).collect()
    }

    /// Three labels; word 0 has one sub-token, word 1 three (their predictions disagree), word 2
    /// none (cut off). Each strategy is computed by hand from the softmax of each row.
    #[test]
    fn each_strategy_reads_the_sub_tokens_as_the_pipeline_does() {
        let b = batch(&[None, Some(0), Some(1), Some(1), Some(1), None]);
        let logits = [
            [9.0, 9.0, 9.0],  // [CLS]: ignored
            [0.0, 2.0, 0.0],  // word 0
            [1.0, 0.0, 0.5],  // word 1, first: tag 0
            [0.0, 3.0, 0.0],  // word 1: tag 1, the most confident sub-token
            [0.0, 1.6, 1.5],  // word 1: tag 1 barely
            [-9.0, 9.0, 9.0], // [SEP]: ignored
        ];
        let flat: Vec<f64> = logits.iter().flatten().copied().collect();
        let p: Vec<Vec<f64>> = logits.iter().map(|r| probs(r)).collect();

        let first = word_tags(&b, &flat, 0, 3, 3, Aggregation::First);
        assert_eq!(first[0].unwrap().0, 1);
        assert!((first[0].unwrap().1 - p[1][1]).abs() < 1e-15);
        assert_eq!(first[1].unwrap().0, 0);
        assert!((first[1].unwrap().1 - p[2][0]).abs() < 1e-15);
        assert_eq!(first[2], None);

        let max = word_tags(&b, &flat, 0, 3, 3, Aggregation::Max);
        assert_eq!(max[1].unwrap().0, 1);
        assert!((max[1].unwrap().1 - p[3][1]).abs() < 1e-15);

        let avg = word_tags(&b, &flat, 0, 3, 3, Aggregation::Average);
        let mean: Vec<f64> = (0..3).map(|k| (p[2][k] + p[3][k] + p[4][k]) / 3.0).collect();
        let k = (0..3).max_by(|&x, &y| mean[x].total_cmp(&mean[y])).unwrap();
        assert_eq!(avg[1].unwrap().0, k);
        assert!((avg[1].unwrap().1 - mean[k]).abs() < 1e-15);
        // One sub-token: every strategy agrees.
        assert_eq!(avg[0], first[0]);
        assert_eq!(max[0], first[0]);
        assert_eq!(avg[2], None);
    }

    /// Where averaging and the first sub-token disagree: the first is unsure, the rest are sure.
    #[test]
    fn averaging_can_overrule_the_first_sub_token() {
        let b = batch(&[Some(0), Some(0), Some(0)]);
        let flat = [0.3, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 0.0];
        assert_eq!(word_tags(&b, &flat, 0, 1, 3, Aggregation::First)[0].unwrap().0, 0);
        assert_eq!(word_tags(&b, &flat, 0, 1, 3, Aggregation::Average)[0].unwrap().0, 1);
        assert_eq!(word_tags(&b, &flat, 0, 1, 3, Aggregation::Max)[0].unwrap().0, 1);
    }

    #[test]
    fn b_tags_continue_as_i_tags_when_the_labels_have_them() {
        let labels: HashMap<String, usize> = ["O", "B-PER", "I-PER", "B-LOC"].iter().enumerate().map(|(i, l)| (l.to_string(), i)).collect();
        let inside = inside_labels(&labels);
        assert_eq!(inside[&0], 0);
        assert_eq!(inside[&1], 2);
        assert_eq!(inside[&2], 2);
        // No I-LOC among the labels: B-LOC stays.
        assert_eq!(inside[&3], 3);
    }

    #[test]
    fn aggregation_names_round_trip() {
        for a in [Aggregation::First, Aggregation::Average, Aggregation::Max] {
            assert_eq!(a.name().parse::<Aggregation>().unwrap(), a);
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        assert!("mean".parse::<Aggregation>().unwrap_err().contains("first, average or max"));
    }
}

//! Recurrent memory over segments (src/memory): packing and segmenting, the layout against the
//! plain model, batch-order invariance, truncated BPTT, and f64 finite differences of the
//! memory, a LayerNorm and the classifier through three segments of the tiny BERT.

mod common;

use common::root;

use engram::data::BertTokenizer;
use engram::memory::{self, pack, segment, MemoryConfig, Unit, MEMORY_PARAM};
use engram::models::bert::{Bert, Head};
use engram::testing::{assert_close, assert_gradcheck};
use engram::{DType, Tape};


fn tiny(mem: &MemoryConfig) -> (Bert, BertTokenizer) {
    let dir = root().join("weights/tiny-bert");
    let (mut bert, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
    memory::attach(&mut bert, mem, &dir, 7).unwrap();
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
    (bert, tok)
}

const DOCS: [&str; 4] = [
    "the quick brown fox jumps over the lazy dog twice and the cat sat on the mat",
    "hello",
    "how do i reset my password? click the link in the email. the weather is nice today",
    "engram runs bert models from safetensors checkpoint on cpu and gpu",
];

fn units(tok: &BertTokenizer, texts: &[&str]) -> Vec<Vec<Unit>> {
    texts.iter().map(|t| memory::units(tok, t, None).unwrap()).collect()
}

fn u(ids: &[u32]) -> Unit {
    Unit { ids: ids.to_vec(), type_id: 0 }
}

#[test]
fn packing_keeps_turns_whole_and_streams_long_ones() {
    let segs = pack(&[u(&[1, 2]), u(&[3, 4, 5]), u(&[6])], 4);
    let ids: Vec<Vec<u32>> = segs.iter().map(|s| s.iter().map(|x| x.0).collect()).collect();
    assert_eq!(ids, vec![vec![1, 2], vec![3, 4, 5, 6]]);
    let segs = pack(&[u(&[1]), u(&(10..20).collect::<Vec<_>>())], 4);
    let ids: Vec<Vec<u32>> = segs.iter().map(|s| s.iter().map(|x| x.0).collect()).collect();
    assert_eq!(ids, vec![vec![1, 10, 11, 12], vec![13, 14, 15, 16], vec![17, 18, 19]]);
    assert_eq!(pack(&[], 4), vec![Vec::new()]);
}

#[test]
fn segments_are_right_aligned_sorted_and_laid_out() {
    let cfg = MemoryConfig::memory(2, 6, None);
    let (_, tok) = tiny(&cfg);
    let seg = segment(&tok, &cfg, &units(&tok, &DOCS), "docs").unwrap();
    let n = seg.steps.len();
    assert_eq!(n, *seg.counts.iter().max().unwrap());
    assert_eq!(seg.counts[1], 1); // "hello"
    // Longest first; every input's last segment is at the last step.
    assert!(seg.order.windows(2).all(|w| seg.counts[w[0]] >= seg.counts[w[1]]));
    assert_eq!(seg.steps.last().unwrap().input_ids.shape()[0], DOCS.len());
    assert_eq!(seg.steps.iter().map(|s| s.joining).sum::<usize>(), DOCS.len());
    // [CLS] [MEM] [MEM] ... [SEP]: ids 2, pad 0 ×2, …, 3.
    let first = seg.steps[0].input_ids.ids("t").unwrap().to_vec();
    assert_eq!(&first[..3], &[2, 0, 0]);
    let t = seg.steps[0].input_ids.shape()[1];
    assert!(t <= cfg.window());
    assert!(first[..t].contains(&3));
    // Too long is a clear error, not a cut.
    let small = MemoryConfig { max_segments: 2, ..cfg.clone() };
    let err = segment(&tok, &small, &units(&tok, &DOCS), "docs.csv").err().unwrap().to_string();
    assert!(err.contains("docs.csv") && err.contains("--max-segments"), "{err}");
}

#[test]
fn one_segment_without_memory_is_the_plain_model() {
    let cfg = MemoryConfig::chunk_mean(40);
    let (bert, tok) = tiny(&cfg);
    let texts: Vec<(String, Option<String>)> = DOCS.iter().map(|d| (d.to_string(), None)).collect();
    let got = memory::predict_logits(&bert, &cfg, &tok, &texts, false).unwrap().logits.to_f64_vec();
    let want = bert.logits(&Tape::inference(), &tok.encode(&DOCS).unwrap(), false).unwrap().to_f64_vec();
    assert_close("chunk-mean of one segment vs plain", &got, &want, 1e-5, 1e-4);
}

#[test]
fn batched_segments_equal_each_input_alone() {
    for cfg in [MemoryConfig::memory(3, 5, None), MemoryConfig::chunk_mean(5)] {
        let (bert, tok) = tiny(&cfg);
        let texts: Vec<(String, Option<String>)> = DOCS.iter().map(|d| (d.to_string(), None)).collect();
        let all = memory::predict_logits(&bert, &cfg, &tok, &texts, true).unwrap();
        for (i, t) in texts.iter().enumerate() {
            let one = memory::predict_logits(&bert, &cfg, &tok, std::slice::from_ref(t), true).unwrap();
            assert_close(&format!("{:?} input {i}", cfg.mode), &all.logits.to_f64_vec()[i * 3..][..3], &one.logits.to_f64_vec(), 1e-5, 1e-4);
            if let (Some(a), Some(b)) = (&all.memory_norms, &one.memory_norms) {
                assert_eq!(a[i].len(), b[0].len());
                assert_close("memory norms", &a[i], &b[0], 1e-5, 1e-4);
            }
        }
    }
}

/// The tiny BERT in f64 with `names` replaced by tracked inputs.
fn with_inputs(base: &Bert, names: &[&str], xs: &[engram::Tensor]) -> Bert {
    let mut params = base.params.clone();
    for (n, x) in names.iter().zip(xs) {
        params.insert(n.to_string(), x.clone());
    }
    Bert { config: base.config.clone(), head: base.head, params, dir: base.dir.clone(), int8: Default::default(), int8_words: None, bf16: false }
}

#[test]
fn memory_gradients_match_finite_differences_through_three_segments() {
    let cfg = MemoryConfig::memory(2, 6, None);
    let (mut bert, tok) = tiny(&cfg);
    for t in bert.params.values_mut() {
        *t = t.to_dtype(DType::F64).unwrap(); // untracked f64 constants
    }
    // Inputs of 3, 2 and 1 segments: memory crosses two segment boundaries, late joiners take
    // the initial memory mid-batch.
    let texts = ["the quick brown fox jumps over the lazy dog twice and the cat sat", "hello world how do i reset", "hello"];
    let seg = segment(&tok, &cfg, &units(&tok, &texts), "t").unwrap();
    assert_eq!(seg.counts, vec![3, 2, 1]);
    let names = [MEMORY_PARAM, "embeddings.LayerNorm.weight", "classifier.weight"];
    let xs: Vec<engram::Tensor> = names.iter().map(|n| bert.params[*n].requires_grad()).collect();
    assert_gradcheck("memory through 3 segments", &xs, 31, |tape, x| {
        Ok(memory::forward(&with_inputs(&bert, &names, x), &cfg, tape, &seg, true, false)?.logits)
    });
    let cm = MemoryConfig::chunk_mean(6);
    let seg = segment(&tok, &cm, &units(&tok, &texts), "t").unwrap();
    assert_gradcheck("chunk mean", &xs[1..], 32, |tape, x| {
        Ok(memory::forward(&with_inputs(&bert, &names[1..], x), &cm, tape, &seg, true, false)?.logits)
    });
}

#[test]
fn truncated_bptt_cuts_the_gradient_not_the_forward() {
    let full = MemoryConfig::memory(2, 6, None);
    let (bert, tok) = tiny(&full);
    let texts = ["the quick brown fox jumps over the lazy dog twice and the cat sat", "how do i reset my password? click the link"];
    let seg = segment(&tok, &full, &units(&tok, &texts), "t").unwrap();
    assert!(seg.counts.iter().all(|&c| c >= 2));
    let run = |cfg: &MemoryConfig| {
        let tape = Tape::training(5);
        let out = memory::forward(&bert, cfg, &tape, &seg, false, false).unwrap();
        let loss = engram::ops::cross_entropy(&tape, &out.logits, &engram::Tensor::from_ids(vec![0, 2], &[2]).unwrap()).unwrap();
        (out.logits.to_f64_vec(), tape.backward(&loss).unwrap(), tape.len())
    };
    let (l_full, g_full, _) = run(&full);
    let (l_cut, g_cut, _) = run(&MemoryConfig { bptt: Some(1), ..full.clone() });
    assert_eq!(l_full, l_cut);
    let mem = &bert.params[MEMORY_PARAM];
    assert!(g_full.get::<f32>(mem).is_some_and(|g| g.iter().any(|&x| x != 0.0)));
    // Every input starts ≥ 2 segments before the end: with K = 1 the initial memory gets nothing.
    assert!(g_cut.get::<f32>(mem).is_none());
    let cls = &bert.params["classifier.weight"];
    assert_close("classifier grad", &g_cut.get::<f32>(cls).unwrap().iter().map(|&x| x as f64).collect::<Vec<_>>(), &g_full.get::<f32>(cls).unwrap().iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-7, 1e-5);
}

#[test]
fn the_first_segment_reaches_the_last_only_through_memory() {
    let cfg = MemoryConfig::memory(2, 6, None);
    let (mut bert, tok) = tiny(&cfg);
    // f64: through two hops of a random tiny model the signal is ~1e-8, below f32 round-off.
    for t in bert.params.values_mut() {
        *t = t.to_dtype(DType::F64).unwrap();
    }
    let tail = "jumps over the lazy dog twice and the cat sat on the mat";
    let a = (format!("hello quick brown fox {tail}"), None);
    let b = (format!("cat quick brown fox {tail}"), None);
    let out = memory::predict_logits(&bert, &cfg, &tok, &[a.clone(), b.clone()], false).unwrap().logits.to_f64_vec();
    let diff = out[..3].iter().zip(&out[3..]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(diff > 1e-12, "memory carried nothing: {out:?}");
    // Without memory the last segment alone decides: identical tails, identical logits.
    let seg = segment(&tok, &cfg, &units(&tok, &[&a.0, &b.0]), "t").unwrap();
    let last = seg.steps.last().unwrap().input_ids.ids("t").unwrap().to_vec();
    let t = last.len() / 2;
    assert_eq!(last[..t], last[t..], "the last segments should be identical");
}

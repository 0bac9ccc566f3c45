//! BERT against transformers: the tiny random BERT (committed in weights/tiny-bert) with a
//! classification head — tokenization, logits, loss and every parameter gradient vs PyTorch —
//! and the real all-MiniLM-L6-v2 (installed by scripts/install-weights.sh) — last hidden state
//! vs transformers and sentence embeddings vs sentence-transformers. Fixtures:
//! weights/generate_fixtures.py. Plus every way a checkpoint can be malformed.

mod common;

use common::root;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engram::data::BertTokenizer;
use engram::models::bert::weights::{read_safetensors, write_safetensors};
use engram::models::bert::{sentence_config, Bert, Head, Precision};
use engram::testing::assert_close;
use engram::{ops, Tape, Tensor};


const PAIRS: [(&str, &str); 3] = [
    ("how do i reset my password?", "click the link in the email."),
    ("the weather is nice today", "it is sunny and warm"),
    ("a", "b c d e f g h i j k"),
];

fn tiny() -> (Bert, BertTokenizer, BTreeMap<String, Tensor>) {
    let dir = root().join("weights/tiny-bert");
    let (bert, report) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
    assert!(report.unexpected.is_empty() && report.initialized.is_empty(), "{report:?}");
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
    let reference = read_safetensors(dir.join("reference.safetensors")).unwrap();
    (bert, tok, reference)
}

#[test]
fn tiny_bert_tokens_logits_loss_and_every_gradient_match_pytorch() {
    let (bert, tok, r) = tiny();
    let batch = tok.encode_pairs(&PAIRS).unwrap();
    assert_eq!(batch.input_ids.to_f64_vec(), r["input_ids"].to_f64_vec(), "input ids differ from the tokenizers reference");
    assert_eq!(batch.token_type_ids.to_f64_vec(), r["token_type_ids"].to_f64_vec());
    assert_eq!(batch.attention_mask.to_f64_vec(), r["attention_mask"].to_f64_vec());

    logits_loss_and_every_gradient_match("tiny", &bert, &batch, &r);
}

/// Logits, loss and the gradient of every parameter (by its checkpoint name) against the
/// PyTorch reference, and every PyTorch parameter has an engram twin.
fn logits_loss_and_every_gradient_match(what: &str, bert: &Bert, batch: &engram::data::Batch, r: &BTreeMap<String, Tensor>) {
    let tape = Tape::training(0);
    let logits = bert.logits(&tape, batch, false).unwrap();
    assert_close(&format!("{what} logits"), &logits.to_f64_vec(), &r["logits"].to_f64_vec(), 1e-5, 1e-4);
    let loss = ops::cross_entropy(&tape, &logits, &r["labels"]).unwrap();
    assert_close(&format!("{what} loss"), &[loss.item().unwrap()], &r["loss"].to_f64_vec(), 1e-6, 1e-4);
    let grads = tape.backward(&loss).unwrap();
    let mut checked = 0;
    for (name, p) in &bert.params {
        let g = grads.tensor(p).unwrap_or_else(|| panic!("{what}: trainable tensor {name} received no gradient"));
        let hf = format!("grad.{}", bert.hf_name(name));
        let want = r.get(&hf).unwrap_or_else(|| panic!("{what}: reference has no {hf} (for {name})"));
        assert_close(&format!("{what} d{name}"), &g.to_f64_vec(), &want.to_f64_vec(), 1e-6, 1e-4);
        checked += 1;
    }
    assert_eq!(checked, r.keys().filter(|k| k.starts_with("grad.")).count(), "{what}: every PyTorch parameter has an engram twin");
}

/// `weights/<fixture>` (a checkpoint of another BERT family member, saved by transformers):
/// loads with nothing unused or initialised, tokenizes the pairs as the reference did, and its
/// last hidden state, logits, loss and every gradient match PyTorch; engram's names for its
/// tensors are exactly the stored ones.
fn family_fixture_matches_pytorch(fixture: &str, family: engram::models::bert::Family) -> (PathBuf, Bert, BertTokenizer) {
    let dir = root().join("weights").join(fixture);
    let (bert, report) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
    assert!(report.unexpected.is_empty() && report.initialized.is_empty(), "{fixture}: {report:?}");
    assert_eq!(bert.config.family, family);
    let r = read_safetensors(dir.join("reference.safetensors")).unwrap();
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
    let batch = tok.encode_pairs(&PAIRS).unwrap();
    assert_eq!(batch.input_ids.to_f64_vec(), r["input_ids"].to_f64_vec(), "{fixture}: input ids");
    assert_eq!(batch.attention_mask.to_f64_vec(), r["attention_mask"].to_f64_vec(), "{fixture}: mask");
    let hidden = bert.encode(&Tape::inference(), &batch, false).unwrap();
    assert_close(&format!("{fixture} last hidden state"), &hidden.to_f64_vec(), &r["last_hidden_state"].to_f64_vec(), 1e-5, 1e-4);
    logits_loss_and_every_gradient_match(fixture, &bert, &batch, &r);
    let stored: std::collections::BTreeSet<String> = read_safetensors(dir.join("model.safetensors")).unwrap().into_keys().collect();
    let ours: std::collections::BTreeSet<String> = bert.params.keys().map(|n| bert.hf_name(n)).collect();
    assert_eq!(ours, stored, "{fixture}: tensor names");
    (dir, bert, tok)
}

/// A random 2-layer DistilBERT (weights/tiny-distilbert, saved by transformers): the DistilBERT
/// names map onto engram's BERT (no token types; `pre_classifier` + ReLU as the pooler; no dropout
/// after the attention output), and logits, loss, the last hidden state and every gradient match
/// PyTorch. Saving writes DistilBERT names back: the file's tensor set is the checkpoint's.
#[test]
fn tiny_distilbert_logits_loss_hidden_state_and_every_gradient_match_pytorch() {
    let (dir, _, _) = family_fixture_matches_pytorch("tiny-distilbert", engram::models::bert::Family::DistilBert);
    // The base model (no head) has no pre_classifier, and a BERT-only config key is not needed.
    let (base, _) = Bert::load(&dir, Head::None, 0).unwrap();
    assert!(!base.params.keys().any(|k| k.starts_with("pooler.") || k.contains("token_type")), "{:?}", base.params.keys());
}

/// A random 2-layer RoBERTa with a byte-level BPE tokenizer (weights/tiny-roberta): tokens
/// (`<s> a </s></s> b </s>`, padded with `<pad>` = 1), position ids counted from the padding
/// index (the padded rows differ if not), the `classifier.dense`/`out_proj` head — last hidden
/// state, logits, loss and every gradient vs PyTorch; names round-trip.
#[test]
fn tiny_roberta_tokens_logits_loss_hidden_state_and_every_gradient_match_pytorch() {
    let (dir, bert, tok) = family_fixture_matches_pytorch("tiny-roberta", engram::models::bert::Family::Roberta);
    assert_eq!(bert.config.max_tokens(), 64, "66 position rows from pad_token_id + 1 = 2");
    // Token classification: RobertaForTokenClassification's plain `classifier`, no head dense.
    let (ner, report) = Bert::load(&dir, Head::TokenClassification { num_labels: 5 }, 0).unwrap();
    assert!(ner.params.keys().all(|k| !k.starts_with("head.")) && ner.hf_name("classifier.weight") == "classifier.weight", "{report:?}");
    // Pre-split words are encoded as word starts (transformers' add_prefix_space for
    // is_split_into_words): "the" after "fox" is the same token as at the start.
    let words = tok.encode_words(&[vec!["the".into(), "fox".into(), "the".into()]]).unwrap();
    let ids = words.input_ids.to_f64_vec();
    assert_eq!(ids.len(), 5, "<s> the fox the </s>: {ids:?}");
    assert_eq!(ids[1], ids[3]);
}

/// XLM-R: RoBERTa's architecture under `model_type: xlm-roberta`, with a SentencePiece-style
/// Unigram tokenizer (Metaspace) — the same checks against PyTorch.
#[test]
fn tiny_xlm_roberta_matches_pytorch() {
    let (_, bert, _) = family_fixture_matches_pytorch("tiny-xlm-roberta", engram::models::bert::Family::Roberta);
    assert_eq!(bert.config.class_prefix(), "XLMRoberta");
}

/// ELECTRA (the discriminator): embeddings 24 wide projected to 32 (`embeddings_project`), token
/// types on pairs, the `classifier.dense` → GELU → `out_proj` head — the same checks.
#[test]
fn tiny_electra_matches_pytorch() {
    let (dir, bert, _) = family_fixture_matches_pytorch("tiny-electra", engram::models::bert::Family::Electra);
    assert_eq!((bert.config.embedding_size, bert.config.hidden_size, bert.config.class_prefix()), (24, 32, "Electra"));
    assert!(!bert.params.keys().any(|k| k.starts_with("pooler.")), "ELECTRA has no pooler");
    // Token classification: a plain classifier; memory tokens need embeddings as wide as the
    // hidden states, so they are refused here with the reason.
    let (mut ner, _) = Bert::load(&dir, Head::TokenClassification { num_labels: 5 }, 0).unwrap();
    assert_eq!(ner.hf_name("classifier.weight"), "classifier.weight");
    let e = engram::memory::attach(&mut ner, &engram::memory::MemoryConfig::memory(2, 8, None), &dir, 0).unwrap_err().to_string();
    assert!(e.contains("24 wide") && e.contains("32"), "{e}");
}

/// ALBERT: one layer's weights shared by three layers (each gradient sums three uses), gelu_new,
/// embeddings 24 → 32, a tanh pooler — the same checks; the saved names are ALBERT's.
#[test]
fn tiny_albert_matches_pytorch() {
    let (dir, bert, _) = family_fixture_matches_pytorch("tiny-albert", engram::models::bert::Family::Albert);
    assert_eq!((bert.config.num_hidden_layers, bert.config.class_prefix()), (3, "Albert"));
    assert!(!bert.params.keys().any(|k| k.starts_with("encoder.layer.1")), "one shared layer");
    // More than one layer group is refused, naming the field.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"num_hidden_groups\": 1", "\"num_hidden_groups\": 2");
    let e = engram::models::bert::BertConfig::from_json(&cfg).unwrap_err().to_string();
    assert!(e.contains("num_hidden_groups = 2"), "{e}");
}

fn minilm_dir() -> PathBuf {
    let d = std::env::var_os("ENGRAM_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("weights/cache/all-MiniLM-L6-v2"));
    assert!(
        d.join("model.safetensors").is_file(),
        "{} is missing: run ./scripts/install-weights.sh (the test command does)",
        d.display()
    );
    d
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    dot / (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() * b.iter().map(|y| y * y).sum::<f64>().sqrt())
}

const SENTENCES: [&str; 4] = [
    "The cat sat on the mat.",
    "Engram runs BERT models from safetensors checkpoints on the CPU and the GPU.",
    "Hello!",
    "A quick brown fox jumps over the lazy dog, twice.",
];

#[test]
fn minilm_hidden_states_and_sentence_embeddings_match_transformers() {
    let dir = minilm_dir();
    let r = read_safetensors(root().join("weights/minilm_reference.safetensors")).unwrap();
    let (bert, report) = Bert::load(&dir, Head::None, 0).unwrap();
    assert!(report.unexpected.is_empty() && report.initialized.is_empty(), "{report:?}");
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 256).unwrap();
    let batch = tok.encode(&SENTENCES).unwrap();
    assert_eq!(batch.input_ids.to_f64_vec(), r["input_ids"].to_f64_vec(), "input ids differ from transformers' tokenizer");
    assert_eq!(batch.attention_mask.to_f64_vec(), r["attention_mask"].to_f64_vec());

    let hidden = bert.encode(&Tape::inference(), &batch, false).unwrap();
    let (got, want) = (hidden.to_f64_vec(), r["last_hidden_state"].to_f64_vec());
    let max_abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("MiniLM last hidden state: max |engram − transformers| = {max_abs:e} over {} values", got.len());
    assert!(max_abs <= 1e-4, "max abs difference {max_abs:e} > 1e-4");

    for (i, cos) in sentence_cosines(&bert, &dir, &batch, &r).into_iter().enumerate() {
        eprintln!("sentence {i}: cosine(engram, sentence-transformers) = {cos:.9}");
        assert!(cos >= 0.99999, "sentence {i}: cosine {cos}");
    }
}

/// Per sentence, the cosine between engram's sentence embedding and sentence-transformers'.
fn sentence_cosines(bert: &Bert, dir: &Path, batch: &engram::data::Batch, r: &BTreeMap<String, Tensor>) -> Vec<f64> {
    let (pooling, _) = sentence_config(dir).unwrap();
    let emb = bert.embed(batch, pooling, false).unwrap();
    let want = r["sentence_embedding"].to_f64_vec();
    emb.iter().zip(want.chunks(384)).map(|(e, w)| cosine(e, w)).collect()
}

/// all-MiniLM-L6-v2 with the encoder's 36 linear layers in int8 (`Bert::quantize_int8`): the
/// sentence embeddings stay within cosine 0.99 of sentence-transformers' f32 ones, with ~4× fewer
/// bytes for those weights.
#[test]
fn minilm_int8_sentence_embeddings_stay_close_to_transformers() {
    let dir = minilm_dir();
    let r = read_safetensors(root().join("weights/minilm_reference.safetensors")).unwrap();
    let (mut bert, _) = Bert::load(&dir, Head::None, 0).unwrap();
    let (before, after) = bert.quantize_int8().unwrap();
    assert_eq!(bert.int8.len(), 36);
    assert!(before > 39 * after / 10, "quantized {before} bytes into {after}");
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 256).unwrap();
    let batch = tok.encode(&SENTENCES).unwrap();
    for (i, cos) in sentence_cosines(&bert, &dir, &batch, &r).into_iter().enumerate() {
        eprintln!("sentence {i}: cosine(engram int8, sentence-transformers f32) = {cos:.6}");
        assert!((0.99..0.99999).contains(&cos), "sentence {i}: cosine {cos}");
    }
}

/// Loading with `Precision::Int8` (each encoder linear weight quantized as it is read) gives the
/// model `quantize_int8` gives after an f32 load, and its checks name the stored tensor.
#[test]
fn int8_load_equals_quantizing_after_load_and_checks_shapes() {
    let dir = root().join("weights/tiny-bert");
    let head = Head::SequenceClassification { num_labels: 2 };
    let (mut a, _) = Bert::load(&dir, head, 7).unwrap();
    let (before, _) = a.quantize_int8().unwrap();
    let (b, report) = Bert::load_with(&dir, head, 7, Precision::Int8).unwrap();
    assert!(before > 0 && report.unexpected.is_empty(), "{report:?}");
    assert_eq!(a.int8.keys().collect::<Vec<_>>(), b.int8.keys().collect::<Vec<_>>());
    assert_eq!(a.params.keys().collect::<Vec<_>>(), b.params.keys().collect::<Vec<_>>());
    assert!(a.int8.keys().all(|k| !b.params.contains_key(k)), "the f32 copies are gone");
    let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
    let batch = tok.encode(&["the cat sat on my mat", "hello"]).unwrap();
    let (la, lb) = (a.logits(&Tape::inference(), &batch, false).unwrap(), b.logits(&Tape::inference(), &batch, false).unwrap());
    assert_eq!(la.to_f64_vec(), lb.to_f64_vec());
    let (f, _) = Bert::load(&dir, head, 7).unwrap();
    assert_ne!(f.logits(&Tape::inference(), &batch, false).unwrap().to_f64_vec(), la.to_f64_vec(), "int8 changed nothing");
    let e = a.logits(&Tape::training(0), &batch, false).expect_err("an int8 model trains").to_string();
    assert!(e.contains("no backward"), "{e}");

    let wrong = variant(
        "int8-shape",
        |t| {
            t.insert("bert.encoder.layer.0.attention.self.query.weight".into(), Tensor::from_vec(vec![0.1f32; 32 * 31], &[32, 31]).unwrap());
        },
        None,
    );
    let e = Bert::load_with(&wrong, head, 0, Precision::Int8).err().expect("a wrong shape loads").to_string();
    assert!(e.contains("model.safetensors") && e.contains("bert.encoder.layer.0.attention.self.query.weight") && e.contains("[32, 31]"), "{e}");
    let extra = variant(
        "int8-extra",
        |t| {
            t.insert("bert.encoder.layer.9.output.dense.weight".into(), Tensor::from_vec(vec![0.1f32; 4], &[2, 2]).unwrap());
        },
        None,
    );
    let (_, report) = Bert::load_with(&extra, head, 0, Precision::Int8).unwrap();
    assert_eq!(report.unexpected, vec!["bert.encoder.layer.9.output.dense.weight".to_string()]);
}

/// A copy of the tiny BERT directory with its tensors renamed / converted by `edit`.
fn variant(tag: &str, edit: impl FnOnce(&mut BTreeMap<String, Tensor>), config: Option<&str>) -> PathBuf {
    let src = root().join("weights/tiny-bert");
    let dir = std::env::temp_dir().join(format!("engram-bert-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    if let Some(c) = config {
        std::fs::write(dir.join("config.json"), c).unwrap();
    }
    let mut t = read_safetensors(src.join("model.safetensors")).unwrap();
    edit(&mut t);
    write_safetensors(dir.join("model.safetensors"), &t, None).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match Bert::load(dir, Head::SequenceClassification { num_labels: 3 }, 0) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn checkpoints_without_prefix_and_with_legacy_names_load_identically() {
    let (bert, tok, r) = tiny();
    let dir = variant(
        "legacy",
        |t| {
            let old = std::mem::take(t);
            for (k, v) in old {
                let k = k.strip_prefix("bert.").unwrap_or(&k).to_string();
                let k = if k.contains("LayerNorm") { k.replace(".weight", ".gamma").replace(".bias", ".beta") } else { k };
                t.insert(k, v);
            }
        },
        None,
    );
    let (b2, report) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
    assert!(report.unexpected.is_empty(), "{report:?}");
    let batch = tok.encode_pairs(&PAIRS).unwrap();
    let l1 = bert.logits(&Tape::inference(), &batch, false).unwrap().to_f64_vec();
    let l2 = b2.logits(&Tape::inference(), &batch, false).unwrap().to_f64_vec();
    assert_eq!(l1, l2);
    assert_close("legacy logits", &l2, &r["logits"].to_f64_vec(), 1e-5, 1e-4);
}

#[test]
fn f16_and_bf16_checkpoints_are_converted_on_load() {
    let src = root().join("weights/tiny-bert");
    let t = read_safetensors(src.join("model.safetensors")).unwrap();
    for (tag, dt) in [("f16", safetensors::Dtype::F16), ("bf16", safetensors::Dtype::BF16)] {
        let dir = std::env::temp_dir().join(format!("engram-bert-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let host: Vec<(String, Vec<u8>, Vec<usize>)> = t
            .iter()
            .map(|(k, v)| {
                let bytes = v
                    .to_f64_vec()
                    .iter()
                    .flat_map(|&x| match dt {
                        safetensors::Dtype::F16 => half::f16::from_f64(x).to_le_bytes(),
                        _ => half::bf16::from_f64(x).to_le_bytes(),
                    })
                    .collect();
                (k.clone(), bytes, v.shape().to_vec())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            host.iter().map(|(k, b, s)| (k.clone(), safetensors::tensor::TensorView::new(dt, s.clone(), b).unwrap())).collect();
        std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        let (b, _) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
        let w = &b.params["encoder.layer.1.intermediate.dense.weight"];
        let orig = t["bert.encoder.layer.1.intermediate.dense.weight"].to_f64_vec();
        let tol = if tag == "f16" { 1e-3 } else { 8e-3 };
        assert_close(&format!("{tag} weights"), &w.to_f64_vec(), &orig, 1e-4, tol);
    }
}

#[test]
fn malformed_checkpoints_are_clear_errors_naming_file_and_tensor() {
    // Missing tensor.
    let dir = variant("missing", |t| drop(t.remove("bert.encoder.layer.1.output.dense.weight")), None);
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("missing") && e.contains("encoder.layer.1.output.dense.weight"), "{e}");
    // Wrong shape.
    let dir = variant(
        "shape",
        |t| {
            t.insert("bert.embeddings.LayerNorm.weight".into(), Tensor::from_vec(vec![1f32; 31], &[31]).unwrap());
        },
        None,
    );
    let e = load_err(&dir);
    assert!(e.contains("embeddings.LayerNorm.weight") && e.contains("[31]") && e.contains("[32]"), "{e}");
    // Unexpected tensors are reported, not fatal.
    let dir = variant(
        "unexpected",
        |t| {
            t.insert("cls.predictions.bias".into(), Tensor::from_vec(vec![0f32; 4], &[4]).unwrap());
        },
        None,
    );
    let (_, report) = Bert::load(&dir, Head::SequenceClassification { num_labels: 3 }, 0).unwrap();
    assert_eq!(report.unexpected, vec!["cls.predictions.bias".to_string()]);
    // Corrupt (truncated) file.
    let dir = variant("corrupt", |_| {}, None);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    // A head missing from the checkpoint is initialised, as transformers does.
    let dir = variant("nohead", |t| t.retain(|k, _| !k.starts_with("classifier.")), None);
    let (b, report) = Bert::load(&dir, Head::TokenClassification { num_labels: 5 }, 0).unwrap();
    assert_eq!(report.initialized, vec!["classifier.weight".to_string(), "classifier.bias".to_string()]);
    assert_eq!(b.params["classifier.weight"].shape(), &[5, 32]);
}

#[test]
fn malformed_configs_are_clear_errors_naming_the_field() {
    let base = std::fs::read_to_string(root().join("weights/tiny-bert/config.json")).unwrap();
    let cases = [
        (base.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\""), "hidden_act"),
        (base.replace("\"model_type\": \"bert\"", "\"model_type\": \"bert\", \"position_embedding_type\": \"relative_key\""), "relative"),
        (base.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"), "num_attention_heads"),
        (base.replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\""), "model_type"),
        (base.replace("\"hidden_size\": 32,", ""), "hidden_size"),
        ("{ not json".to_string(), "not valid JSON"),
        // Found by scripts/fuzz-inputs.py: a corrupt layer count made loading run out of memory.
        (base.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2147483648"), "num_hidden_layers"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let dir = variant(&format!("config{i}"), |_| {}, Some(text));
        let e = load_err(&dir);
        assert!(e.contains("config.json") && e.contains(needle), "case {i}: {e}");
    }
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.contains("/nonexistent/model"), "{e}");
    // DistilBERT configs: errors in the file's own field names.
    let distil = std::fs::read_to_string(root().join("weights/tiny-distilbert/config.json")).unwrap();
    let cases = [
        (distil.replace("\"sinusoidal_pos_embds\": false", "\"sinusoidal_pos_embds\": true"), "sinusoidal_pos_embds"),
        (distil.replace("\"dim\": 32,", ""), "needs \"dim\""),
        (distil.replace("\"activation\": \"gelu\"", "\"activation\": \"swish\""), "activation \"swish\""),
        (distil.replace("\"n_heads\": 4", "\"n_heads\": 5"), "not a multiple of n_heads 5"),
        (distil.replace("\"dropout\": 0.1", "\"dropout\": 1.5"), "dropout = 1.5"),
    ];
    // A tokenizer.json cut inside its byte-level decoder: the tokenizers library panics on that
    // one (found by scripts/fuzz-inputs.py); engram reports it.
    let tj = std::fs::read_to_string(root().join("weights/tiny-roberta/tokenizer.json")).unwrap();
    let cut = tj.find("\"decoder\"").expect("a decoder section") + 30;
    let dir = std::env::temp_dir().join(format!("engram-cut-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &tj[..cut]).unwrap();
    let e = BertTokenizer::from_file(dir.join("tokenizer.json"), 64).err().expect("a truncated tokenizer.json must not load").to_string();
    assert!(e.contains("tokenizer.json") && e.contains("not valid JSON"), "{e}");
    // RoBERTa: its position ids start after the padding index.
    let roberta = std::fs::read_to_string(root().join("weights/tiny-roberta/config.json")).unwrap();
    let bad = roberta.replace("\"pad_token_id\": 1", "\"pad_token_id\": 64");
    assert_ne!(bad, roberta);
    let e = engram::models::bert::BertConfig::from_json(&bad).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("pad_token_id = 64"), "{e}");
    for (i, (text, needle)) in cases.iter().enumerate() {
        assert_ne!(text, &distil, "case {i} must change the config");
        let e = engram::models::bert::BertConfig::from_json(text).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(needle), "distilbert case {i}: {e}");
    }
}

#[test]
fn too_long_text_is_truncated_and_flagged() {
    let (bert, _, _) = tiny();
    let tok = BertTokenizer::from_file(root().join("weights/tiny-bert/tokenizer.json"), 16).unwrap();
    let long = "a b c d e f g h i j k ".repeat(10);
    let batch = tok.encode(&[long.as_str(), "hello"]).unwrap();
    assert_eq!(batch.seq_len(), 16);
    assert_eq!(batch.truncated, vec![true, false]);
    bert.logits(&Tape::inference(), &batch, false).unwrap();
    // Beyond the model's position table it is an error, not a panic.
    let tok = BertTokenizer::from_file(root().join("weights/tiny-bert/tokenizer.json"), 100).unwrap();
    let e = bert.logits(&Tape::inference(), &tok.encode(&[long.as_str()]).unwrap(), false).unwrap_err().to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
}

/// A checkpoint with only its slow tokenizer's files (`vocab.txt`; `vocab.json` + `merges.txt`):
/// the tokenizer engram builds from them encodes exactly as the checkpoint's own `tokenizer.json`
/// (which transformers' converters made from the same vocabulary) — ids, types, masks, offsets,
/// word ids — on single texts, pairs and pre-split words, tricky text included.
#[test]
fn slow_tokenizer_files_build_the_tokenizer_json_they_came_from() {
    let texts = [
        "Hello, world! The café's naïve résumé costs $3.50.",
        "我爱北京天安门 and ＦＵＬＬ-width Ｔｅｘｔ",
        "a [MASK] token, [CLS] and [SEP] inside text, <s> and </s> too",
        "emoji 🙂🚀 tabs\tand   spaces\u{0007}control",
        "supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidociousx words",
        "  leading and trailing  ",
        "ÀÉÎÕÜ straße İstanbul",
        "",
    ];
    let words: Vec<Vec<String>> = vec![vec!["Hello".into(), "wörld".into(), "!".into()], vec!["über".into(), "[MASK]".into(), "🙂".into()]];
    // (Not tiny-bert: its generator built tokenizer.json without registering [CLS] and the others
    // as added tokens, which transformers' converter always does, so literal "[MASK]" differs.)
    for (name, src) in [("minilm", minilm_dir()), ("tiny-roberta", root().join("weights/tiny-roberta"))] {
        let tj: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("engram-slow-tok-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if src.join("tokenizer_config.json").is_file() {
            std::fs::copy(src.join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
        }
        let vocab = tj["model"]["vocab"].as_object().unwrap();
        if tj["model"]["type"] == "WordPiece" {
            let mut v: Vec<(&String, u64)> = vocab.iter().map(|(k, i)| (k, i.as_u64().unwrap())).collect();
            v.sort_by_key(|x| x.1);
            assert!(v.iter().enumerate().all(|(i, x)| x.1 == i as u64), "{name}: ids are dense");
            std::fs::write(dir.join("vocab.txt"), v.iter().map(|x| format!("{}\n", x.0)).collect::<String>()).unwrap();
        } else {
            std::fs::write(dir.join("vocab.json"), serde_json::to_string(vocab).unwrap()).unwrap();
            let merges: String = tj["model"]["merges"].as_array().unwrap().iter().map(|m| match m {
                serde_json::Value::String(s) => format!("{s}\n"),
                pair => format!("{} {}\n", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            }).collect();
            std::fs::write(dir.join("merges.txt"), format!("#version: 0.2\n{merges}")).unwrap();
        }
        let fast = BertTokenizer::from_dir(&src, 48).unwrap();
        let slow = BertTokenizer::from_dir(&dir, 48).unwrap();
        let same = |what: &str, a: &engram::data::Batch, b: &engram::data::Batch| {
            assert_eq!(a.input_ids.ids("t").unwrap(), b.input_ids.ids("t").unwrap(), "{name} {what}: ids");
            assert_eq!(a.token_type_ids.ids("t").unwrap(), b.token_type_ids.ids("t").unwrap(), "{name} {what}: types");
            assert_eq!(a.attention_mask.ids("t").unwrap(), b.attention_mask.ids("t").unwrap(), "{name} {what}: mask");
            assert_eq!((&a.offsets, &a.word_ids, &a.truncated), (&b.offsets, &b.word_ids, &b.truncated), "{name} {what}: offsets, words");
        };
        same("texts", &fast.encode(&texts).unwrap(), &slow.encode(&texts).unwrap());
        let pairs: Vec<(&str, &str)> = texts.iter().zip(texts.iter().rev()).map(|(a, b)| (*a, *b)).collect();
        same("pairs", &fast.encode_pairs(&pairs).unwrap(), &slow.encode_pairs(&pairs).unwrap());
        same("words", &fast.encode_words(&words).unwrap(), &slow.encode_words(&words).unwrap());
        assert!(slow.encode(&texts).unwrap().input_ids.ids("t").unwrap().iter().any(|&i| i > 4), "{name}: real tokens");
    }
    // No tokenizer at all: an error naming what is missing.
    let empty = std::env::temp_dir().join(format!("engram-no-tok-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let e = BertTokenizer::from_dir(&empty, 48).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("vocab.txt"), "{e}");
    // A vocab.json id far past the vocabulary (found by fuzzing: the library then walked every id
    // below it) is an error naming the token.
    std::fs::write(empty.join("vocab.json"), r#"{"<s>": 0, "</s>": 1, "a": 1000000000000}"#).unwrap();
    std::fs::write(empty.join("merges.txt"), "#version: 0.2\n").unwrap();
    let e = BertTokenizer::from_dir(&empty, 48).err().unwrap().to_string();
    assert!(e.contains("vocab.json") && e.contains("\"a\" has id 1000000000000"), "{e}");
}

/// Gradient checkpointing (`Tape::checkpointing`, `finetune --gradient-checkpointing`) changes
/// what a step keeps, not what it computes: on training tapes with dropout on, the loss and the
/// gradient of every parameter are bit for bit those of a plain tape — BERT, DistilBERT (no
/// attention-output dropout) and ELECTRA — in f32 and in bf16 autocast, while the tape holds a
/// fraction of the bytes. ALBERT shares one layer's weights among all layers: a plain tape adds
/// each layer's bias rows straight onto the running sum, a checkpointed one sums a layer first and
/// then adds it, so those gradients agree to float rounding (and the loss bit for bit).
#[test]
fn gradient_checkpointing_gives_the_same_bits_with_less_held() {
    for (family, head) in [
        ("tiny-bert", Head::SequenceClassification { num_labels: 3 }),
        ("tiny-distilbert", Head::SequenceClassification { num_labels: 2 }),
        ("tiny-albert", Head::TokenClassification { num_labels: 4 }),
        ("tiny-electra", Head::SequenceClassification { num_labels: 2 }),
    ] {
        let dir = root().join("weights").join(family);
        let (bert, _) = Bert::load(&dir, head, 7).unwrap();
        let params: Vec<(String, Tensor)> = bert.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // (ALBERT's config has no dropout, as the released ALBERT v2 checkpoints.)
        let dropout = bert.config.hidden_dropout_prob > 0.0 && bert.config.attention_probs_dropout_prob > 0.0;
        assert!(dropout || family == "tiny-albert", "{family}: dropout must be on");
        let tok = BertTokenizer::from_file(dir.join("tokenizer.json"), 32).unwrap();
        let batch = tok.encode_pairs(&PAIRS).unwrap();
        let b = batch.input_ids.shape()[0];
        for bf16 in [false, true] {
            let run = |ckpt: bool| {
                let tape = Tape::training(99).bf16(bf16).checkpointing(ckpt);
                let logits = bert.logits(&tape, &batch, true).unwrap();
                let y = match head {
                    Head::TokenClassification { .. } => Tensor::from_ids((0..logits.shape()[0] * logits.shape()[1]).map(|i| (i % 4) as i64).collect(), &logits.shape()[..2]).unwrap(),
                    _ => Tensor::from_ids((0..b as i64).map(|i| i % 2).collect(), &[b]).unwrap(),
                };
                let logits = if logits.rank() == 3 { engram::ops::reshape(&tape, &logits, &[logits.shape()[0] * logits.shape()[1], logits.shape()[2]]).unwrap() } else { logits };
                let y = engram::ops::reshape(&tape, &y, &[y.numel()]).unwrap();
                let loss = engram::ops::cross_entropy(&tape, &logits, &y).unwrap();
                let held = tape.held_bytes();
                let g = tape.backward(&loss).unwrap();
                // (None: a parameter the head does not use, e.g. the pooler under a token head.)
                let grads: Vec<Option<Vec<u32>>> =
                    params.iter().map(|(_, p)| g.tensor(p).map(|t| t.to_f64_vec().iter().map(|&x| (x as f32).to_bits()).collect())).collect();
                (loss.to_f64_vec()[0], grads, held)
            };
            let (l0, g0, held0) = run(false);
            let (l1, g1, held1) = run(true);
            assert_eq!(l0.to_bits(), l1.to_bits(), "{family} bf16 {bf16}: loss {l0} vs checkpointed {l1}");
            for ((k, _), (a, c)) in params.iter().zip(g0.iter().zip(&g1)) {
                if family == "tiny-albert" && k.starts_with("encoder.layer.") {
                    let f = |v: &Option<Vec<u32>>| v.as_ref().unwrap().iter().map(|&b| f32::from_bits(b) as f64).collect::<Vec<f64>>();
                    assert_close(&format!("{family} bf16 {bf16}: shared {k}"), &f(c), &f(a), 1e-7, 1e-5);
                } else {
                    assert!(a == c, "{family} bf16 {bf16}: gradient of {k} differs with checkpointing");
                }
            }
            assert!(g0.iter().filter(|g| g.is_some()).count() + 2 >= params.len(), "{family}: too few gradients");
            assert!(held1 * 2 < held0, "{family}: checkpointed tape holds {held1} bytes, plain {held0}");
        }
    }
}

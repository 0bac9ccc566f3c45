//! The trainer on the tiny BERT and the small synthetic files in tests/fixtures/data: gradient
//! accumulation equals the big batch, an interrupted run resumed from its checkpoint ends with
//! bit-identical weights, a frozen backbone stays frozen, the output directory reloads with the
//! same predictions, NER labels align to first sub-tokens, and bad data is an error naming the file.

mod common;

use common::root;
use std::path::{Path, PathBuf};

use engram::models::bert::weights::read_safetensors;
use engram::models::bert::Precision;
use engram::train::{finetune, predict_dir, Aggregation, ClassWeights, EvalOptions, FinetuneArgs, OptimizerKind, TagOptions, Task};


fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engram-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A copy of the tiny BERT with dropout off (so different batchings see the same network). Each
/// test passes its own `tag`: tests run in parallel, and `tmp` empties the directory first.
fn tiny_without_dropout(tag: &str) -> PathBuf {
    let dir = tmp(&format!("tiny-nodrop-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = root().join("weights/tiny-bert");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let cfg = cfg.replace("\"hidden_dropout_prob\": 0.1", "\"hidden_dropout_prob\": 0.0").replace("\"attention_probs_dropout_prob\": 0.1", "\"attention_probs_dropout_prob\": 0.0");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    dir
}

fn args(model: &Path, task: Task, out: PathBuf) -> FinetuneArgs {
    let d = root().join("tests/fixtures/data");
    let (train, dev) = match task {
        Task::Ner => (d.join("tiny_train.conll"), d.join("tiny_dev.conll")),
        _ => (d.join("tiny_train.csv"), d.join("tiny_dev.csv")),
    };
    let mut a = FinetuneArgs::new(model.to_path_buf(), task, train, dev, out);
    a.lr = 1e-3;
    a.epochs = 2;
    a.batch_size = 8;
    a.warmup_ratio = 0.1;
    a.progress = false;
    a.seed = 3;
    a
}

fn weights(dir: &Path) -> Vec<(String, Vec<f64>)> {
    read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().map(|(k, v)| (k, v.to_f64_vec())).collect()
}

/// The largest difference between any two weights of two runs' final checkpoints.
fn max_weight_diff(a: &FinetuneArgs, b: &FinetuneArgs) -> f64 {
    let (wa, wb) = (weights(&a.out.join("checkpoint")), weights(&b.out.join("checkpoint")));
    wa.iter().zip(&wb).flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f64::max)
}

#[test]
fn gradient_accumulation_4x8_equals_batch_32() {
    let model = tiny_without_dropout("accum");
    let mut big = args(&model, Task::Classify, tmp("big"));
    big.epochs = 1;
    big.batch_size = 32;
    big.max_train_examples = Some(32);
    let mut acc = big.clone();
    acc.out = tmp("acc");
    acc.batch_size = 8;
    acc.grad_accum = 4;
    finetune(&big).unwrap();
    finetune(&acc).unwrap();
    let (wb, wa) = (weights(&big.out.join("checkpoint")), weights(&acc.out.join("checkpoint")));
    let base = weights(&model);
    let mut moved = 0.0f64;
    for ((n, b), (_, a)) in wb.iter().zip(&wa) {
        for (x, y) in b.iter().zip(a) {
            assert!((x - y).abs() <= 1e-6 + 1e-4 * x.abs(), "{n}: batch 32 gives {x}, 4×8 accumulation gives {y}");
        }
    }
    for ((_, b), (_, o)) in wb.iter().zip(&base) {
        moved = moved.max(b.iter().zip(o).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max));
    }
    assert!(moved > 1e-4, "the step must change the weights (max change {moved})");
}

#[test]
fn resume_from_a_mid_run_checkpoint_gives_bitwise_identical_weights() {
    for opt in [OptimizerKind::Adamw, OptimizerKind::Sgd] {
        let model = root().join("weights/tiny-bert");
        let tag = format!("{opt:?}").to_lowercase();
        let mut full = args(&model, Task::Classify, tmp(&format!("full-{tag}")));
        full.optimizer = opt;
        finetune(&full).unwrap();
        let mut part = full.clone();
        part.out = tmp(&format!("part-{tag}"));
        part.stop_after_steps = Some(3); // mid-epoch (6 steps per epoch)
        finetune(&part).unwrap();
        assert!(!part.out.join("all_results.json").exists(), "an interrupted run has no final results");
        part.stop_after_steps = None;
        part.resume = true;
        finetune(&part).unwrap();
        let all: serde_json::Value = serde_json::from_slice(&std::fs::read(part.out.join("all_results.json")).unwrap()).unwrap();
        assert_eq!(all["epoch"], serde_json::json!(full.epochs as f64), "{all}");
        let a = std::fs::read(full.out.join("checkpoint/model.safetensors")).unwrap();
        let b = std::fs::read(part.out.join("checkpoint/model.safetensors")).unwrap();
        assert!(a == b, "{tag}: resumed weights differ from the uninterrupted run");
        if opt == OptimizerKind::Adamw {
            // A checkpoint from before engram_state.json (its counters in trainer_state.json)
            // still resumes exactly.
            let mut old = full.clone();
            (old.out, old.stop_after_steps) = (tmp("part-old-format"), Some(3));
            finetune(&old).unwrap();
            let ck = old.out.join("checkpoint");
            std::fs::rename(ck.join("engram_state.json"), ck.join("trainer_state.json")).unwrap();
            (old.stop_after_steps, old.resume) = (None, true);
            finetune(&old).unwrap();
            assert!(std::fs::read(ck.join("model.safetensors")).unwrap() == a, "resumed from an old-format checkpoint");
        }
        // The optimizer state (AdamW moments; SGD momentum buffers) is saved and restored exactly.
        let state = read_safetensors(full.out.join("checkpoint/optimizer.safetensors")).unwrap();
        let key = if opt == OptimizerKind::Sgd { "momentum_buffer.classifier.weight" } else { "m.classifier.weight" };
        assert!(state.contains_key(key), "{tag}: optimizer.safetensors lacks {key}");
        let oa = std::fs::read(full.out.join("checkpoint/optimizer.safetensors")).unwrap();
        let ob = std::fs::read(part.out.join("checkpoint/optimizer.safetensors")).unwrap();
        assert!(oa == ob, "{tag}: resumed optimizer state differs");
        let ma: serde_json::Value = serde_json::from_slice(&std::fs::read(full.out.join("metrics.json")).unwrap()).unwrap();
        let mb: serde_json::Value = serde_json::from_slice(&std::fs::read(part.out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(ma["loss_per_step"], mb["loss_per_step"], "{tag}");
        // The pre-clip gradient norm of every step, across the resume too.
        assert_eq!(ma["grad_norm_per_step"], mb["grad_norm_per_step"], "{tag}");
        let norms = ma["grad_norm_per_step"].as_array().unwrap();
        assert_eq!(norms.len(), ma["loss_per_step"].as_array().unwrap().len());
        assert!(norms.iter().all(|n| n[1].as_f64().unwrap() > 0.0), "{tag}: {norms:?}");
        // Resuming with the other optimizer is refused, naming the file, and changes nothing.
        part.optimizer = if opt == OptimizerKind::Sgd { OptimizerKind::Adamw } else { OptimizerKind::Sgd };
        let e = finetune(&part).unwrap_err().to_string();
        assert!(e.contains("training_args.json") && e.contains("same optimizer"), "{e}");
        assert!(std::fs::read(part.out.join("checkpoint/model.safetensors")).unwrap() == b, "{tag}: a refused resume wrote weights");
        part.optimizer = opt;
        // So is resuming on other data (here: the first 40 examples of 48) or with another batch size or seed.
        let mut other = part.clone();
        other.max_train_examples = Some(40);
        let e = finetune(&other).unwrap_err().to_string();
        assert!(e.contains("tiny_train.csv") && e.contains("not the data the checkpoint"), "{e}");
        for (flag, set) in [("--batch-size", (|a: &mut FinetuneArgs| a.batch_size = 4) as fn(&mut FinetuneArgs)), ("--seed", |a| a.seed += 1)] {
            let mut other = part.clone();
            set(&mut other);
            let e = finetune(&other).unwrap_err().to_string();
            assert!(e.contains("training_args.json") && e.contains(flag), "{flag}: {e}");
        }
        assert!(std::fs::read(part.out.join("checkpoint/model.safetensors")).unwrap() == b, "{tag}: a refused resume wrote weights");
    }
}

/// The JSON objects of a JSONL file.
fn jsonl(path: impl AsRef<Path>) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A predictions file (`test_predictions.jsonl`, `eval --predictions`): one row per example of
/// `data`, in its order, each with the gold answer and what `predict` answers for that input.
fn check_predictions(model: &Path, rows: &Path, gold_rows: usize) {
    let rows = jsonl(rows);
    assert_eq!(rows.len(), gold_rows);
    let texts: Vec<String> = rows.iter().map(|r| match (&r["text"], &r["tokens"]) {
        (serde_json::Value::String(t), _) => t.clone(),
        (_, serde_json::Value::Array(w)) => w.iter().map(|w| w.as_str().unwrap()).collect::<Vec<_>>().join(" "),
        _ => panic!("{r}"),
    }).collect();
    let p = predict_dir(model, &texts, 128, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    for (r, p) in rows.iter().zip(&p) {
        assert!(!r["gold"].is_null(), "{r}");
        if let Some(label) = p["label"].as_str() {
            assert_eq!(r["predicted"], label, "{r} vs {p}");
            assert!((r["score"].as_f64().unwrap() - p["probs"][label].as_f64().unwrap()).abs() < 1e-5, "{r} vs {p}");
        } else if let Some(score) = p["score"].as_f64() {
            assert!((r["predicted"].as_f64().unwrap() - score).abs() < 1e-5, "{r} vs {p}");
        } else if p["tags"].is_array() {
            assert_eq!(r["predicted"], p["tags"], "{r} vs {p}");
        } else {
            assert_eq!(r["predicted"], p["labels"], "{r} vs {p}");
        }
    }
}

#[test]
fn output_dir_is_an_hf_model_that_reloads_with_the_same_predictions() {
    let model = root().join("weights/tiny-bert");
    let mut a = args(&model, Task::Classify, tmp("hf"));
    a.test = Some(root().join("tests/fixtures/data/tiny_dev.csv"));
    let s = finetune(&a).unwrap();
    assert!(s.best_metric.is_finite() && s.test.is_some());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["0"], "neg");
    assert_eq!(cfg["label2id"]["pos"], 1);
    let names: Vec<String> = read_safetensors(a.out.join("model.safetensors")).unwrap().into_keys().collect();
    assert!(names.contains(&"bert.encoder.layer.1.output.dense.weight".to_string()) && names.contains(&"classifier.weight".to_string()));
    for f in ["tokenizer.json", "metrics.json", "training.svg", "checkpoint/trainer_state.json", "README.md", "all_results.json"] {
        assert!(a.out.join(f).is_file(), "{f} missing");
    }
    // The model card: the test split's accuracy, as the run reported it, and a row per epoch.
    let card = std::fs::read_to_string(a.out.join("README.md")).unwrap();
    let acc = s.test.as_ref().unwrap()["accuracy"].as_f64().unwrap();
    assert!(card.contains("pipeline_tag: text-classification") && card.contains(&format!("- Accuracy: {acc:.4}\n")), "{card}");
    let rows = card.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Training Loss")).count();
    assert_eq!(rows, a.epochs, "{card}");
    // all_results.json in transformers' names: the kept dev evaluation's, the test split's, the run's.
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("all_results.json")).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
    let best = m["epochs"].as_array().unwrap().iter().find(|e| e["step"] == m["best_step"]).unwrap();
    assert_eq!((&all["eval_accuracy"], &all["eval_loss"]), (&best["values"]["accuracy"], &best["dev"]["loss"]), "{all}");
    assert_eq!(all["test_accuracy"].as_f64(), Some(acc));
    let steps = m["loss_per_step"].as_array().unwrap();
    let mean = steps.iter().map(|x| x[1].as_f64().unwrap()).sum::<f64>() / steps.len() as f64;
    assert!((all["train_loss"].as_f64().unwrap() - mean).abs() < 1e-12 && all["epoch"] == serde_json::json!(a.epochs as f64), "{all}");
    assert!(all["train_samples_per_second"].as_f64().unwrap() > 0.0 && all["train_runtime"].as_f64().unwrap() > 0.0, "{all}");
    // The test split's predictions, in the file's order; they score the reported accuracy.
    let test_rows = std::fs::read_to_string(a.test.as_ref().unwrap()).unwrap().lines().count() - 1;
    check_predictions(&a.out, &a.out.join("test_predictions.jsonl"), test_rows);
    let rows = jsonl(a.out.join("test_predictions.jsonl"));
    let first_text = std::fs::read_to_string(a.test.as_ref().unwrap()).unwrap().lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    assert_eq!(rows[0]["text"], first_text.as_str());
    let right = rows.iter().filter(|r| r["gold"] == r["predicted"]).count() as f64 / rows.len() as f64;
    assert!((right - acc).abs() < 1e-12, "{right} vs {acc}");
    let texts = vec!["the cat is nice and warm".to_string(), "my lazy dog".to_string()];
    let p1 = predict_dir(&a.out, &texts, 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let p2 = predict_dir(&a.out, &texts, 64, 1, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    assert_eq!(p1.len(), 2);
    // Batches run in order of length (the second text is the shorter); answers come back in input order.
    for (p, t) in p1.iter().zip(&texts) {
        assert_eq!(p["text"].as_str(), Some(t.as_str()));
    }
    for (x, y) in p1.iter().zip(&p2) {
        assert_eq!(x["label"], y["label"]);
        let (px, py) = (x["probs"]["pos"].as_f64().unwrap(), y["probs"]["pos"].as_f64().unwrap());
        assert!((px - py).abs() < 1e-5, "batching changed a probability: {px} vs {py}");
    }
    // The library form: loaded once, it answers call after call as `predict` does.
    let model = engram::train::Predictor::load(&a.out, engram::train::PredictOptions { max_length: 64, batch_size: 8, ..Default::default() }).unwrap();
    assert_eq!((model.task(), model.labels()), (Task::Classify, &["neg".to_string(), "pos".to_string()][..]));
    let typed = model.predict(&texts).unwrap();
    assert_eq!(typed.iter().map(|p| serde_json::to_value(p).unwrap()).collect::<Vec<_>>(), p1);
    let engram::train::Output::Label { label, probs } = &typed[0].output else { panic!("{:?}", typed[0]) };
    assert_eq!((label.as_str(), probs.get("pos")), (p1[0]["label"].as_str().unwrap(), p1[0]["probs"]["pos"].as_f64()));
    assert_eq!(model.predict(&texts[1..]).unwrap()[0], typed[1]);
    assert!(model.predict(&[]).unwrap().is_empty());
    // int8 inference (the encoder's linear layers quantized): nearly the f32 probabilities and
    // dev loss, but not exactly the loss (so the int8 layers really ran).
    let q = predict_dir(&a.out, &texts, 64, 8, engram::Device::Cpu, Precision::Int8, false, None).unwrap();
    for (x, y) in p1.iter().zip(&q) {
        let (px, py) = (x["probs"]["pos"].as_f64().unwrap(), y["probs"]["pos"].as_f64().unwrap());
        assert!((px - py).abs() < 0.02, "int8 probability {py} vs f32 {px}");
    }
    let (_, f32_eval) = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { max_length: 64, device: engram::Device::Cpu, precision: Precision::F32, ..Default::default() }).unwrap();
    let (_, int8_eval) = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { max_length: 64, device: engram::Device::Cpu, precision: Precision::Int8, ..Default::default() }).unwrap();
    let (l32, l8) = (f32_eval["metrics"]["loss"].as_f64().unwrap(), int8_eval["metrics"]["loss"].as_f64().unwrap());
    assert!((l32 - l8).abs() < 0.01 * l32 && l32 != l8, "dev loss int8 {l8} vs f32 {l32}");
    // The evaluation batch changes only rounding (padding is masked); 0 is an error.
    let (_, one) = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { max_length: 64, batch_size: 1, ..Default::default() }).unwrap();
    assert_eq!(one["values"]["accuracy"], f32_eval["values"]["accuracy"]);
    assert!((one["metrics"]["loss"].as_f64().unwrap() - l32).abs() < 1e-6, "{one} vs {f32_eval}");
    let e = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { batch_size: 0, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("--batch-size"), "{e}");
    let nowhere = a.out.join("no-such-dir/p.jsonl");
    let e = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { predictions: Some(nowhere), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("no-such-dir") && e.contains("--predictions"), "checked before the model runs: {e}");
}

#[test]
fn frozen_backbone_trains_only_the_head_and_sgd_works() {
    let model = root().join("weights/tiny-bert");
    let mut a = args(&model, Task::Classify, tmp("frozen"));
    a.freeze_backbone = true;
    a.optimizer = OptimizerKind::Sgd;
    a.lr = 0.05;
    a.epochs = 1;
    finetune(&a).unwrap();
    let before = weights(&model);
    let after = weights(&a.out.join("checkpoint"));
    for ((n, x), (_, y)) in before.iter().zip(&after) {
        let changed = x.iter().zip(y).any(|(p, q)| p != q);
        assert_eq!(changed, n.starts_with("classifier."), "{n}: changed = {changed}");
    }
}

/// DistilBERT, RoBERTa and XLM-R checkpoints fine-tune like a BERT and are saved as transformers saves
/// them: their own tensor names, `model_type` and architecture; the sequence head's extra layer
/// (DistilBERT's `pre_classifier`, RoBERTa's `classifier.dense`) trains with a frozen backbone,
/// as it belongs to the head, and is absent from the token head; the outputs reload.
#[test]
fn distilbert_and_roberta_finetune_and_save_in_their_own_format() {
    for (fixture, model_type, class, seq_only) in [
        ("tiny-distilbert", "distilbert", "DistilBert", &["pre_classifier."][..]),
        ("tiny-roberta", "roberta", "Roberta", &["classifier.dense.", "classifier.out_proj."][..]),
        ("tiny-xlm-roberta", "xlm-roberta", "XLMRoberta", &["classifier.dense.", "classifier.out_proj."][..]),
        ("tiny-electra", "electra", "Electra", &["classifier.dense.", "classifier.out_proj."][..]),
        ("tiny-albert", "albert", "Albert", &[][..]),
    ] {
        let model = root().join("weights").join(fixture);
        let stored: Vec<String> = weights(&model).into_iter().map(|(n, _)| n).collect();
        let mut a = args(&model, Task::Classify, tmp(fixture));
        a.freeze_backbone = true;
        a.epochs = 1;
        finetune(&a).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model_type"], model_type);
        assert_eq!(cfg["architectures"][0], format!("{class}ForSequenceClassification"));
        let after = weights(&a.out.join("checkpoint"));
        assert_eq!(after.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), stored, "{fixture}: the checkpoint's own tensor names");
        for ((n, x), (_, y)) in weights(&model).iter().zip(&after) {
            let head = n.starts_with("classifier.") || seq_only.iter().any(|p| n.starts_with(p));
            // The 3-label head of the fixture becomes a fresh 2-label one: only compare same shapes.
            if x.len() == y.len() {
                let changed = x.iter().zip(y).any(|(p, q)| p != q);
                assert_eq!(changed, head, "{fixture} {n}: changed = {changed}");
            }
        }
        let p = predict_dir(&a.out, &["the cat is nice".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
        assert!(p[0]["probs"]["pos"].as_f64().is_some(), "{p:?}");

        let mut a = args(&model, Task::Ner, tmp(&format!("{fixture}-ner")));
        a.epochs = 1;
        finetune(&a).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], format!("{class}ForTokenClassification"));
        let names: Vec<String> = weights(&a.out).into_iter().map(|(n, _)| n).collect();
        // ALBERT's pooler is backbone (frozen above) but, as BERT's, not part of a token classifier.
        let seq_names = if fixture == "tiny-albert" { &["albert.pooler."][..] } else { seq_only };
        let mut want: Vec<String> = stored.iter().filter(|n| !seq_names.iter().any(|p| n.starts_with(p))).cloned().collect();
        for n in ["classifier.bias", "classifier.weight"] {
            if !want.iter().any(|w| w == n) {
                want.push(n.to_string());
            }
        }
        want.sort();
        assert_eq!(names, want, "{fixture}: token-classification names");
        let p = predict_dir(&a.out, &["the quick brown fox".to_string()], 64, 4, engram::Device::Cpu, Precision::F32, false, None).unwrap();
        assert_eq!(p[0]["tags"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn ner_trains_and_predicts_entity_spans() {
    let model = root().join("weights/tiny-bert");
    let mut a = args(&model, Task::Ner, tmp("ner"));
    a.epochs = 12;
    a.lr = 5e-3;
    a.batch_size = 4;
    let s = finetune(&a).unwrap();
    assert_eq!(s.metric, "entity_f1");
    let p = predict_dir(&a.out, &["the quick brown fox is on my email".to_string()], 64, 4, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let tags = p[0]["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 8);
    assert_eq!(p[0]["tokens"][2], "brown");
    for e in p[0]["entities"].as_array().unwrap() {
        let (st, en) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
        assert_eq!(&"the quick brown fox is on my email"[st..en], e["text"].as_str().unwrap());
    }
    assert!(s.best_metric > 0.5, "tiny NER should learn the fixed pattern (entity F1 {})", s.best_metric);
    // Each entity's score is the mean softmax probability of its words' tags (at their first
    // sub-token), recomputed here from the model's logits.
    let text = "my brown fox and the email";
    let p = predict_dir(&a.out, &[text.to_string()], 64, 4, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let entities = p[0]["entities"].as_array().unwrap();
    assert!(!entities.is_empty(), "{}", p[0]);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.out.join("config.json")).unwrap()).unwrap();
    let labels = cfg["id2label"].as_object().unwrap().len();
    let (bert, _) = engram::models::bert::Bert::load(&a.out, engram::models::bert::Head::TokenClassification { num_labels: labels }, 0).unwrap();
    let tok = engram::data::BertTokenizer::from_dir(&a.out, 64).unwrap();
    let words: Vec<String> = text.split(' ').map(String::from).collect();
    let batch = tok.encode_words(std::slice::from_ref(&words)).unwrap();
    let logits = bert.logits(&bert.inference_tape(), &batch, false).unwrap().to_f64_vec();
    let prob = |w: usize| {
        let i = batch.word_ids[0].iter().position(|x| *x == Some(w as u32)).unwrap();
        let row = &logits[i * labels..][..labels];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        1.0 / row.iter().map(|x| (x - m).exp()).sum::<f64>()
    };
    for e in entities {
        let first = words.iter().position(|w| e["text"].as_str().unwrap().starts_with(w.as_str())).unwrap();
        let n = e["text"].as_str().unwrap().split(' ').count();
        let want = (first..first + n).map(prob).sum::<f64>() / n as f64;
        assert!((e["score"].as_f64().unwrap() - want).abs() < 2e-6, "{e}: want score {want}");
    }
}

#[test]
fn bad_data_is_an_error_naming_the_file_and_line() {
    let model = root().join("weights/tiny-bert");
    let bad = tmp("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let cases = [
        ("a.csv", "text,label\nok,pos\n\"never closed,neg\n", "never closed"),
        ("b.csv", "words,label\nx,pos\n", "header must name"),
        ("c.csv", "text,label\nx,pos,extra\n", "line 2"),
        ("d.jsonl", "{\"text\": \"x\", \"label\": \"pos\"}\n{oops\n", "line 2"),
        ("e.xml", "<x/>", "unknown extension"),
    ];
    for (name, body, needle) in cases {
        let p = bad.join(name);
        std::fs::write(&p, body).unwrap();
        let mut a = args(&model, Task::Classify, tmp("badout"));
        a.train = p.clone();
        let e = finetune(&a).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    let p = bad.join("f.conll");
    std::fs::write(&p, "x O\ny Q-PER\n").unwrap();
    let mut a = args(&model, Task::Ner, tmp("badout2"));
    a.train = p;
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("f.conll") && e.contains("line 2") && e.contains("BIO"), "{e}");
    // A dev label the model never saw in training (classification) is an error, not a panic.
    let p = bad.join("dev.csv");
    std::fs::write(&p, "text,label\nx,maybe\n").unwrap();
    let mut a = args(&model, Task::Classify, tmp("badout3"));
    a.dev = p;
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("dev.csv") && e.contains("maybe"), "{e}");
    // Multi-label and regression files: what each task reads, with the line of a bad label.
    let cases: [(Task, &str, &str, &str); 6] = [
        (Task::Regression, "r.csv", "text,label\nx,0.5\ny,high\n", "line 3: label \"high\" is not a finite number"),
        (Task::Regression, "r.jsonl", "{\"text\": \"x\", \"label\": 1}\n{\"text\": \"y\", \"label\": \"NaN\"}\n", "line 2: label \"NaN\" is not a finite number"),
        (Task::Regression, "r2.jsonl", "{\"text\": \"x\", \"label\": [1]}\n", "and a number \"label\""),
        (Task::Multilabel, "m.jsonl", "{\"text\": \"x\", \"labels\": [\"a\", {}]}\n", "line 1: the labels array must hold strings or numbers"),
        (Task::Multilabel, "m.csv", "text,tags\nx,a\n", "\"label\" or \"labels\""),
        (Task::Multilabel, "m2.csv", "text,labels\nx,\ny,\n", "no example has a label"),
    ];
    for (task, name, body, needle) in cases {
        let p = bad.join(name);
        std::fs::write(&p, body).unwrap();
        let mut a = args(&model, task, tmp("badout4"));
        (a.train, a.dev) = (p.clone(), p);
        let e = finetune(&a).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    // A metric the task does not report is refused before training, not after an epoch.
    let mut a = args(&model, Task::Classify, tmp("badout5"));
    a.metric = "pearson".into();
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("unknown metric \"pearson\" for the classify task") && e.contains("accuracy, macro_f1, loss"), "{e}");
    assert!(!a.out.exists(), "nothing may be written");
}

#[test]
fn bad_hyperparameters_and_divergence_are_errors_that_keep_the_best_model() {
    let model = root().join("weights/tiny-bert");
    type Case = (&'static str, fn(&mut FinetuneArgs));
    let cases: [Case; 10] = [
        ("--save-steps", |a| a.save_steps = Some(0)),
        ("eval batch size", |a| a.eval_batch_size = 0),
        ("--label-smoothing", |a| a.label_smoothing = 1.0),
        ("--label-smoothing", |a| a.label_smoothing = f64::NAN),
        ("--label-smoothing", |a| {
            a.task = Task::Regression;
            a.label_smoothing = 0.1
        }),
        ("--lr", |a| a.lr = f64::NAN),
        ("--lr", |a| a.lr = f64::INFINITY),
        ("--weight-decay", |a| a.weight_decay = f64::NAN),
        ("--max-grad-norm", |a| a.max_grad_norm = -1.0),
        ("--momentum", |a| {
            a.optimizer = OptimizerKind::Sgd;
            a.momentum = 1.5
        }),
    ];
    for (needle, set) in cases {
        let mut a = args(&model, Task::Classify, tmp("hyper"));
        set(&mut a);
        let e = finetune(&a).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!a.out.join("model.safetensors").exists(), "{needle}: nothing may be written");
    }
    let mut a = args(&model, Task::Classify, tmp("hyper"));
    a.max_train_examples = Some(0);
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("tiny_train.csv") && e.contains("no training examples"), "{e}");

    // A finite but absurd learning rate without clipping: the weights overflow and the loss turns
    // NaN within the first epoch. Training must stop there with an error, not save a NaN model.
    let mut a = args(&model, Task::Classify, tmp("diverge"));
    a.lr = 1e30;
    a.warmup_ratio = 0.0;
    a.max_grad_norm = 0.0;
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("diverged") && e.contains("no model was written"), "{e}");
    assert!(!a.out.join("model.safetensors").exists());
    // Diverging after a good epoch (resumed with an absurd lr): the error names the best epoch,
    // and the model in OUT is that epoch's, untouched.
    let mut a = args(&model, Task::Classify, tmp("diverge2"));
    a.epochs = 1;
    finetune(&a).unwrap();
    let good = weights(&a.out);
    a.epochs = 2;
    a.resume = true;
    a.lr = 1e30;
    a.max_grad_norm = 0.0;
    let e = finetune(&a).unwrap_err().to_string();
    assert!(e.contains("diverged") && e.contains("best model so far (epoch 1)"), "{e}");
    assert_eq!(weights(&a.out), good, "the best model in OUT must be kept as it was");
}

/// `--stride` on token classification: a document far longer than the window is tagged word by
/// word, each word by the window that owns it (rebuilt here from `windows::plan` by predicting
/// each window's words alone); `eval` scores whole documents from the same tags; and training
/// on documents with windows learns as training on their sentences does.
#[test]
fn ner_stride_tags_every_word_of_long_inputs_through_windows() {
    use engram::train::windows;
    let model = root().join("weights/tiny-bert");
    let dir = tmp("stride-data");
    std::fs::create_dir_all(&dir).unwrap();
    // The fixture's sentences, five to a document (each document ~4 windows of 16 tokens).
    let docs = |from: &str, to: &str| {
        let ex = engram::train::load_token_classification(root().join("tests/fixtures/data").join(from)).unwrap();
        let mut out = String::new();
        for (k, e) in ex.iter().enumerate() {
            let engram::train::Example::Tokens { words, tags, .. } = e else { panic!() };
            for (w, t) in words.iter().zip(tags) {
                out.push_str(&format!("{w} {t}\n"));
            }
            if k % 5 == 4 {
                out.push('\n');
            }
        }
        std::fs::write(dir.join(to), out).unwrap();
        dir.join(to)
    };
    let (train_docs, dev_docs) = (docs("tiny_train.conll", "train.conll"), docs("tiny_dev.conll", "dev.conll"));
    let mut a = args(&model, Task::Ner, tmp("stride"));
    (a.epochs, a.lr, a.batch_size) = (12, 5e-3, 4);
    (a.train, a.dev, a.max_length, a.stride) = (train_docs, dev_docs.clone(), 16, Some(4));
    let s = finetune(&a).unwrap();
    assert!(s.best_metric > 0.5, "windows of documents should learn the pattern as sentences do (entity F1 {})", s.best_metric);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.out.join("checkpoint/training_args.json")).unwrap()).unwrap();
    assert_eq!(saved["stride"], serde_json::json!(4));

    let dev = engram::train::load_token_classification(&dev_docs).unwrap();
    let texts: Vec<String> = dev.iter().map(|e| match e { engram::train::Example::Tokens { words, .. } => words.join(" "), _ => panic!() }).collect();
    let tok = engram::data::BertTokenizer::from_dir(&a.out, 16).unwrap();
    let cpu = engram::Device::Cpu;
    // The assembly is checked on a model one step from its random head, whose tags depend on
    // the context enough that two windows often disagree on a shared word.
    let mut raw = a.clone();
    (raw.out, raw.max_steps) = (tmp("stride-raw"), Some(1));
    finetune(&raw).unwrap();
    let mut disagree = 0;
    for out in [&a.out, &raw.out] {
        let strided = predict_dir(out, &texts, 16, 3, cpu, Precision::F32, false, Some(4)).unwrap();
        let cut = predict_dir(out, &texts, 16, 3, cpu, Precision::F32, false, None).unwrap();
        for (k, text) in texts.iter().enumerate() {
            let words: Vec<String> = text.split(' ').map(String::from).collect();
            let tags: Vec<String> = strided[k]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            assert_eq!(tags.len(), words.len());
            assert!(strided[k].get("truncated").is_none() && cut[k]["truncated"] == serde_json::json!(true), "document {k}");
            // Each window alone: its owned words' tags are the document's.
            let plan = windows::plan(&tok.word_token_counts(&words).unwrap(), 16 - 2, 4);
            assert!(plan.len() >= 2, "document {k} has {} windows", plan.len());
            let alone: Vec<String> = plan.iter().map(|w| words[w.span.clone()].join(" ")).collect();
            let p = predict_dir(out, &alone, 16, 8, cpu, Precision::F32, false, None).unwrap();
            for (j, (w, pw)) in plan.iter().zip(&p).enumerate() {
                assert!(pw.get("truncated").is_none());
                for i in w.own.clone() {
                    assert_eq!(tags[i], pw["tags"][i - w.span.start], "document {k}, word {i} ({})", words[i]);
                }
                if let Some(next) = plan.get(j + 1) {
                    disagree += (next.span.start..w.span.end).filter(|&i| pw["tags"][i - w.span.start] != p[j + 1]["tags"][i - next.span.start]).count();
                }
            }
            // Entity offsets point into the text, also past the first window.
            for e in strided[k]["entities"].as_array().unwrap() {
                let (st, en) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
                assert_eq!(&text[st..en], e["text"].as_str().unwrap());
            }
        }
    }
    assert!(disagree > 0, "no two windows disagreed on a shared word: ownership went untested");
    let strided = predict_dir(&a.out, &texts, 16, 3, cpu, Precision::F32, false, Some(4)).unwrap();
    // eval scores the whole documents with those tags; truncated, it misses the later entities.
    let gold: Vec<Vec<String>> = dev.iter().map(|e| match e { engram::train::Example::Tokens { tags, .. } => tags.clone(), _ => panic!() }).collect();
    let pred: Vec<Vec<String>> = strided.iter().map(|p| p["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()).collect();
    let want = engram::train::metrics::entity_report(&gold, &pred).overall.f1;
    let (text, json) = engram::train::evaluate_dir(&a.out, &dev_docs, &EvalOptions { max_length: 16, device: cpu, precision: Precision::F32, tagging: TagOptions::stride(Some(4)), ..Default::default() }).unwrap();
    assert!((json["values"]["entity_f1"].as_f64().unwrap() - want).abs() < 1e-12, "eval {} vs predict's tags {want}", json["values"]["entity_f1"]);
    assert_eq!(json["metrics"]["windowed"], serde_json::json!(dev.len()), "{json}");
    assert_eq!(json["metrics"]["truncated"], serde_json::json!(0), "{json}");
    assert!(text.contains("overlapping windows (--stride 4)"), "{text}");
    let (_, cut_json) = engram::train::evaluate_dir(&a.out, &dev_docs, &EvalOptions { max_length: 16, device: cpu, precision: Precision::F32, ..Default::default() }).unwrap();
    let (r_strided, r_cut) = (json["values"]["entity_recall"].as_f64().unwrap(), cut_json["values"]["entity_recall"].as_f64().unwrap());
    assert!(r_cut + 0.25 < r_strided, "truncated documents lose their later entities (recall {r_cut} vs {r_strided})");
    // The flag is token classification's, and the stride must leave the window room to move.
    let e = predict_dir(&a.out, &texts, 16, 3, cpu, Precision::F32, false, Some(14)).unwrap_err().to_string();
    assert!(e.contains("--stride") && e.contains("14"), "{e}");
    let mut c = args(&model, Task::Classify, tmp("stride-classify"));
    c.stride = Some(4);
    let e = finetune(&c).unwrap_err().to_string();
    assert!(e.contains("token classification"), "{e}");
}

/// Each word's tag under `--aggregation`, as transformers' pipeline reads sub-tokens: the first
/// one's argmax; the argmax of their mean softmax; the argmax of the one whose best probability
/// is highest (the first on ties).
fn tags_by_hand(dir: &Path, text: &str, agg: Aggregation) -> Vec<String> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let id2label = cfg["id2label"].as_object().unwrap();
    let n = id2label.len();
    let (bert, _) = engram::models::bert::Bert::load(dir, engram::models::bert::Head::TokenClassification { num_labels: n }, 0).unwrap();
    let tok = engram::data::BertTokenizer::from_dir(dir, 64).unwrap();
    let words: Vec<String> = text.split(' ').map(String::from).collect();
    let batch = tok.encode_words(std::slice::from_ref(&words)).unwrap();
    let logits = bert.logits(&bert.inference_tape(), &batch, false).unwrap().to_f64_vec();
    let softmax = |i: usize| {
        let row = &logits[i * n..][..n];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
        row.iter().map(|x| (x - m).exp() / z).collect::<Vec<f64>>()
    };
    let argmax = |p: &[f64]| (0..p.len()).fold(0, |b, j| if p[j] > p[b] { j } else { b });
    (0..words.len())
        .map(|w| {
            let probs: Vec<Vec<f64>> = batch.word_ids[0].iter().enumerate().filter(|(_, x)| **x == Some(w as u32)).map(|(i, _)| softmax(i)).collect();
            let tag = match agg {
                Aggregation::First => argmax(&probs[0]),
                Aggregation::Average => argmax(&(0..n).map(|j| probs.iter().map(|p| p[j]).sum::<f64>() / probs.len() as f64).collect::<Vec<_>>()),
                Aggregation::Max => {
                    let best = (0..probs.len()).fold(0, |b, k| if probs[k][argmax(&probs[k])] > probs[b][argmax(&probs[b])] { k } else { b });
                    argmax(&probs[best])
                }
            };
            id2label[&tag.to_string()].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn ner_label_all_tokens_trains_and_aggregation_reads_every_sub_token() {
    use engram::train::{PredictOptions, Predictor};
    let model = root().join("weights/tiny-bert");
    let mut a = args(&model, Task::Ner, tmp("label-all"));
    (a.epochs, a.lr, a.batch_size, a.label_all_tokens) = (12, 5e-3, 4, true);
    let s = finetune(&a).unwrap();
    assert!(s.best_metric > 0.5, "labelling every sub-token should learn the fixed pattern (entity F1 {})", s.best_metric);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.out.join("checkpoint/training_args.json")).unwrap()).unwrap();
    assert_eq!(saved["label_all_tokens"], serde_json::json!(true));
    // A model one step from its random head disagrees with itself across sub-tokens more.
    let mut raw = a.clone();
    (raw.out, raw.max_steps) = (tmp("label-all-raw"), Some(1));
    finetune(&raw).unwrap();
    let texts: Vec<String> = [
        "the snuffleupagus brown fox grumbled at xylophones today",
        "brown fox emailed the quizzically brown fox",
        "my email from the unfathomable cat",
        "xylophones brown fox snuffleupagus email",
    ]
    .map(String::from)
    .to_vec();
    let mut changed = [0, 0];
    for dir in [&a.out, &raw.out] {
        for agg in [Aggregation::First, Aggregation::Average, Aggregation::Max] {
            let opts = PredictOptions { max_length: 64, batch_size: 3, aggregation: agg, ..Default::default() };
            let preds = Predictor::load(dir, opts).unwrap().predict(&texts).unwrap();
            for (text, p) in texts.iter().zip(&preds) {
                let p = serde_json::to_value(p).unwrap();
                let tags: Vec<String> = p["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
                let want = tags_by_hand(dir, text, agg);
                assert_eq!(tags, want, "{agg:?} on {text:?}");
                if agg != Aggregation::First {
                    let first = tags_by_hand(dir, text, Aggregation::First);
                    changed[agg as usize - 1] += want.iter().zip(&first).filter(|(x, y)| x != y).count();
                }
            }
        }
    }
    assert!(changed[0] > 0 && changed[1] > 0, "average / max never overruled the first sub-token ({changed:?}): the strategies went untested");
    // eval scores the tags the chosen aggregation gives: gold here is the first-sub-token tags.
    let dev = tmp("label-all-dev").with_extension("conll");
    let mut conll = String::new();
    for text in &texts {
        for (w, t) in text.split(' ').zip(tags_by_hand(&raw.out, text, Aggregation::First)) {
            conll.push_str(&format!("{w} {t}\n"));
        }
        conll.push('\n');
    }
    std::fs::write(&dev, conll).unwrap();
    let gold: Vec<Vec<String>> = texts.iter().map(|t| tags_by_hand(&raw.out, t, Aggregation::First)).collect();
    for agg in [Aggregation::First, Aggregation::Average, Aggregation::Max] {
        let rows = raw.out.join("dev_predictions.jsonl");
        let (text, json) = engram::train::evaluate_dir(&raw.out, &dev, &EvalOptions { max_length: 64, tagging: TagOptions { stride: None, aggregation: agg }, predictions: Some(rows.clone()), ..Default::default() }).unwrap();
        let pred: Vec<Vec<String>> = texts.iter().map(|t| tags_by_hand(&raw.out, t, agg)).collect();
        let rows = jsonl(&rows);
        assert_eq!(rows.iter().map(|r| r["predicted"].clone()).collect::<Vec<_>>(), pred.iter().map(|p| serde_json::json!(p)).collect::<Vec<_>>(), "{agg:?}");
        assert_eq!(rows.iter().map(|r| r["gold"].clone()).collect::<Vec<_>>(), gold.iter().map(|p| serde_json::json!(p)).collect::<Vec<_>>());
        let want = engram::train::metrics::entity_report(&gold, &pred).overall.f1;
        assert!((json["values"]["entity_f1"].as_f64().unwrap() - want).abs() < 1e-12, "{agg:?}: eval {} vs {want}", json["values"]["entity_f1"]);
        assert_eq!(json["metrics"]["aggregation"], serde_json::json!(agg.name()));
        assert_eq!(text.contains(&format!("--aggregation {}", agg.name())), agg != Aggregation::First, "{text}");
    }
    // Both flags are token classification's.
    let mut c = args(&model, Task::Classify, tmp("label-all-classify"));
    c.label_all_tokens = true;
    let e = finetune(&c).unwrap_err().to_string();
    assert!(e.contains("--label-all-tokens") && e.contains("classify"), "{e}");
    (c.label_all_tokens, c.aggregation) = (false, Aggregation::Max);
    let e = finetune(&c).unwrap_err().to_string();
    assert!(e.contains("--aggregation"), "{e}");
}

#[test]
fn over_long_inputs_are_marked_truncated() {
    let model = tiny_without_dropout("trunc");
    let mut a = args(&model, Task::Classify, tmp("trunc"));
    a.epochs = 1;
    finetune(&a).unwrap();
    let long = vec!["good "; 200].concat();
    let p = predict_dir(&a.out, &["good".to_string(), long], 128, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    assert!(p[0].get("truncated").is_none(), "{}", p[0]);
    assert_eq!(p[1]["truncated"], serde_json::json!(true), "{}", p[1]);
    let dev = tmp("trunc-dev");
    std::fs::create_dir_all(&dev).unwrap();
    let f = dev.join("dev.csv");
    let label = predict_dir(&a.out, &["x".to_string()], 128, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap()[0]["label"].as_str().unwrap().to_string();
    std::fs::write(&f, format!("text,label\nshort,{label}\n{},{label}\n", vec!["word "; 300].concat())).unwrap();
    let rows = dev.join("rows.jsonl");
    let (text, json) = engram::train::evaluate_dir(&a.out, &f, &EvalOptions { max_length: 128, predictions: Some(rows.clone()), ..Default::default() }).unwrap();
    assert_eq!(json["metrics"]["truncated"], serde_json::json!(1), "{json}");
    assert!(text.contains("1 of 2 inputs were longer than"), "{text}");
    // The predictions file marks which one: the second.
    let rows = jsonl(&rows);
    assert!(rows[0].get("truncated").is_none() && rows[1]["truncated"] == serde_json::json!(true), "{rows:?}");
}

#[test]
fn memory_model_trains_saves_reloads_and_resumes_exactly() {
    use engram::memory::{MemoryConfig, MEMORY_PARAM};
    let model = tiny_without_dropout("mem");
    let mut a = args(&model, Task::Classify, tmp("mem"));
    // Segments of 4 text tokens: the fixture sentences take 2–4 segments each.
    a.memory = Some(MemoryConfig::memory(2, 4, None));
    let s = finetune(&a).unwrap();
    let names: Vec<String> = read_safetensors(a.out.join("model.safetensors")).unwrap().into_keys().collect();
    assert!(!names.iter().any(|n| n.contains("memory")), "model.safetensors must stay a plain BERT");
    let mem = read_safetensors(a.out.join("memory.safetensors")).unwrap();
    assert_eq!(mem[MEMORY_PARAM].shape(), &[2, 32]);
    let cfg: MemoryConfig = serde_json::from_slice(&std::fs::read(a.out.join("memory.json")).unwrap()).unwrap();
    assert_eq!(cfg, MemoryConfig::memory(2, 4, None));
    // Reloaded and re-evaluated: the same dev accuracy and loss as the epoch that saved it.
    let (_, json) = engram::train::evaluate_dir(&a.out, &a.dev, &EvalOptions { max_length: 128, device: engram::Device::Cpu, precision: Precision::F32, ..Default::default() }).unwrap();
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
    let best = &metrics["epochs"][s.best_epoch - 1]["dev"];
    assert_eq!(json["values"]["accuracy"].as_f64().unwrap(), s.best_metric);
    assert!((json["values"]["loss"].as_f64().unwrap() - best["loss"].as_f64().unwrap()).abs() < 1e-6);
    // predict streams segments; batching does not change it; memory norms per segment.
    let texts = vec!["the quick brown fox jumps over the lazy dog twice".to_string(), "my lazy dog".to_string()];
    let p1 = predict_dir(&a.out, &texts, 64, 8, engram::Device::Cpu, Precision::F32, true, None).unwrap();
    let p2 = predict_dir(&a.out, &texts, 64, 1, engram::Device::Cpu, Precision::F32, true, None).unwrap();
    for (x, y) in p1.iter().zip(&p2) {
        assert_eq!(x["label"], y["label"]);
        assert!((x["probs"]["pos"].as_f64().unwrap() - y["probs"]["pos"].as_f64().unwrap()).abs() < 1e-5);
        assert_eq!(x["memory_norms"].as_array().unwrap().len(), x["segments"].as_u64().unwrap() as usize);
    }
    assert_eq!(p1[0]["segments"], 3);
    // int8 inference streams the same segments (the memory tokens go through the int8 layers).
    let q = predict_dir(&a.out, &texts, 64, 8, engram::Device::Cpu, Precision::Int8, true, None).unwrap();
    for (x, y) in p1.iter().zip(&q) {
        assert_eq!(x["segments"], y["segments"]);
        let (px, py) = (x["probs"]["pos"].as_f64().unwrap(), y["probs"]["pos"].as_f64().unwrap());
        assert!((px - py).abs() < 0.02, "int8 memory model: {py} vs f32 {px}");
    }
    assert_ne!(p1, q, "int8 changed nothing (probabilities and memory norms all equal)");
    // Interrupted after 3 steps and resumed: bit-identical memory and weights.
    let mut part = args(&model, Task::Classify, tmp("mem-part"));
    part.memory = a.memory.clone();
    part.stop_after_steps = Some(3);
    finetune(&part).unwrap();
    part.stop_after_steps = None;
    part.resume = true;
    part.memory = None; // comes back from the checkpoint
    finetune(&part).unwrap();
    let ka = std::fs::read(a.out.join("checkpoint/memory.safetensors")).unwrap();
    let kb = std::fs::read(part.out.join("checkpoint/memory.safetensors")).unwrap();
    assert!(ka == kb, "resumed memory differs");
    assert!(weights(&a.out.join("checkpoint")) == weights(&part.out.join("checkpoint")));
}

/// `--profile` changes nothing about training (bitwise-equal weights) and writes a per-op table
/// whose counts match the steps run: 2 epochs × 6 micro-batches, one cross-entropy each.
#[test]
fn profiled_training_is_identical_and_counts_every_step() {
    let model = root().join("weights/tiny-bert");
    let plain = args(&model, Task::Classify, tmp("noprof"));
    finetune(&plain).unwrap();
    let mut prof = plain.clone();
    prof.out = tmp("prof");
    prof.profile = true;
    finetune(&prof).unwrap();
    let a = std::fs::read(plain.out.join("checkpoint/model.safetensors")).unwrap();
    let b = std::fs::read(prof.out.join("checkpoint/model.safetensors")).unwrap();
    assert!(a == b, "profiling changed the trained weights");
    assert!(!plain.out.join("profile.txt").exists());
    let table = std::fs::read_to_string(prof.out.join("profile.txt")).unwrap();
    assert!(table.contains("(12 micro-batches"), "{table}");
    let row = |op: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.split_whitespace().next() == Some(op)).unwrap_or_else(|| panic!("no {op} row in\n{table}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!((row("cross_entropy")[1].as_str(), row("cross_entropy")[3].as_str()), ("12", "12"));
    let lin = row("linear");
    assert_eq!(lin[1], lin[3], "every linear forward has its backward");
    for extra in ["tokenise + batch", "clip + optimizer", "dev evaluation", "wall, all epochs"] {
        assert!(table.contains(extra), "{extra} missing:\n{table}");
    }
}

/// The pair task (dialogue history + candidate): trains, predicts HISTORY<TAB>CANDIDATE, and an
/// input without a candidate is an error naming the model, not a prediction for an empty pair.
#[test]
fn pair_model_predicts_pairs_and_refuses_a_missing_candidate() {
    let model = tiny_without_dropout("pair");
    let dir = tmp("pair-data");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: String = (0..16)
        .map(|i| {
            let (a, b) = if i % 2 == 0 { ("good", "good") } else { ("good", "bad") };
            format!("{{\"text\": \"the film was {a}\", \"text_pair\": \"it was {b}\", \"label\": \"{}\"}}\n", if a == b { "same" } else { "different" })
        })
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), rows).unwrap();
    let mut a = args(&model, Task::Pair, tmp("pair"));
    a.train = dir.join("pairs.jsonl");
    a.dev = dir.join("pairs.jsonl");
    a.epochs = 1;
    finetune(&a).unwrap();
    let ok = predict_dir(&a.out, &["the film was good\tit was bad".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    assert!(ok[0]["label"].is_string(), "{}", ok[0]);
    let e = predict_dir(&a.out, &["the film was good".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap_err().to_string();
    assert!(e.contains("no candidate") && e.contains("pair model"), "{e}");
}

/// Sentences over the tiny vocabulary in which "cat" means the label `animal` and "hello" the
/// label `greeting` (both, either or neither), and a score = 2·[cat] + [hello] − 1 for regression.
fn label_pattern(dir: &Path, n: usize, seed: usize) -> (PathBuf, PathBuf) {
    let filler = ["mat", "sat", "my", "on", "the", "is", "today", "how", "models", "runs", "in", "from"];
    let (mut multi, mut reg) = (String::new(), String::new());
    for i in 0..n {
        let k = i + seed * 7919;
        let (cat, hello) = (k.is_multiple_of(2), (k / 2).is_multiple_of(2));
        // Five words whatever the labels: the length must not give the labels away.
        let mut words: Vec<&str> = (0..5 - cat as usize - hello as usize).map(|j| filler[(k * 5 + j * 3 + k / 3) % filler.len()]).collect();
        if cat {
            words.insert(k % 3, "cat");
        }
        if hello {
            words.insert(k % 4, "hello");
        }
        let labels: Vec<&str> = [("animal", cat), ("greeting", hello)].iter().filter(|(_, on)| *on).map(|(l, _)| *l).collect();
        let text = words.join(" ");
        multi += &format!("{}\n", serde_json::json!({ "text": text, "labels": labels }));
        reg += &format!("{}\n", serde_json::json!({ "text": text, "label": 2.0 * cat as u8 as f64 + hello as u8 as f64 - 1.0 }));
    }
    let (m, r) = (dir.join(format!("multi{seed}.jsonl")), dir.join(format!("reg{seed}.jsonl")));
    std::fs::write(&m, multi).unwrap();
    std::fs::write(&r, reg).unwrap();
    (m, r)
}

/// all-MiniLM-L6-v2 (installed by scripts/install-weights.sh): the random tiny BERT learns either
/// keyword alone at once but often settles on one of the two when both are labels (PyTorch's
/// BertForSequenceClassification does the same from it), so the two-label pattern is learned
/// from the pretrained model, as users do.
fn minilm() -> PathBuf {
    std::env::var_os("ENGRAM_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("weights/cache/all-MiniLM-L6-v2"))
}

#[test]
fn multilabel_and_regression_learn_the_pattern_and_save_their_problem_type() {
    let model = minilm();
    let dir = tmp("label-pattern");
    std::fs::create_dir_all(&dir).unwrap();
    let (train_m, train_r) = label_pattern(&dir, 96, 0);
    let (dev_m, dev_r) = label_pattern(&dir, 16, 1);
    let texts = vec!["hello my cat is on".to_string(), "the mat is sat on".to_string(), "hello today my runs in".to_string()];
    let config = |out: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap() };

    let mut a = args(&model, Task::Multilabel, tmp("multilabel"));
    (a.train, a.dev, a.epochs, a.lr, a.batch_size) = (train_m, dev_m.clone(), 3, 2e-4, 8);
    let s = finetune(&a).unwrap();
    assert_eq!(s.metric, "micro_f1");
    assert!(s.best_metric >= 0.9, "the multi-label head should learn which words carry which label (micro F1 {})", s.best_metric);
    let cfg = config(&a.out);
    assert_eq!((cfg["problem_type"].as_str(), cfg["architectures"][0].as_str()), (Some("multi_label_classification"), Some("BertForSequenceClassification")));
    assert_eq!(cfg["id2label"], serde_json::json!({ "0": "animal", "1": "greeting" }));
    let p = predict_dir(&a.out, &texts, 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let got: Vec<&serde_json::Value> = p.iter().map(|o| &o["labels"]).collect();
    assert_eq!(got, [&serde_json::json!(["animal", "greeting"]), &serde_json::json!([]), &serde_json::json!(["greeting"])], "{p:?}");
    let pa = p[0]["probs"]["animal"].as_f64().unwrap();
    assert!(pa > 0.5 && pa < 1.0, "a sigmoid, not a softmax over labels: {}", p[0]);
    let (_, json) = engram::train::evaluate_dir(&a.out, &dev_m, &EvalOptions { max_length: 64, device: engram::Device::Cpu, precision: Precision::F32, ..Default::default() }).unwrap();
    assert!(json["values"]["accuracy"].as_f64().unwrap() >= 0.8, "{json}");

    let mut r = args(&model, Task::Regression, tmp("regression"));
    (r.train, r.dev, r.epochs, r.lr, r.batch_size) = (train_r, dev_r, 4, 2e-4, 8);
    let s = finetune(&r).unwrap();
    assert_eq!(s.metric, "pearson");
    assert!(s.best_metric >= 0.9, "the regression head should learn the score (Pearson {})", s.best_metric);
    let cfg = config(&r.out);
    assert_eq!(cfg["problem_type"], "regression");
    assert_eq!(cfg["id2label"], serde_json::json!({ "0": "LABEL_0" }));
    let p = predict_dir(&r.out, &texts, 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let scores: Vec<f64> = p.iter().map(|o| o["score"].as_f64().unwrap()).collect();
    for (got, want) in scores.iter().zip([2.0, -1.0, 0.0]) {
        assert!((got - want).abs() < 0.5, "cat + hello → 2, neither → −1, hello → 0: {scores:?}");
    }
    // What evaluation reports is what --metric may name (checked before training).
    for (task, out, data) in [(Task::Multilabel, &a.out, &a.dev), (Task::Regression, &r.out, &r.dev)] {
        let rows = out.join("dev_predictions.jsonl");
        let (_, json) = engram::train::evaluate_dir(out, data, &EvalOptions { max_length: 64, device: engram::Device::Cpu, precision: Precision::F32, predictions: Some(rows.clone()), ..Default::default() }).unwrap();
        let header = usize::from(data.extension().is_some_and(|e| e == "csv" || e == "tsv"));
        check_predictions(out, &rows, std::fs::read_to_string(data).unwrap().lines().filter(|l| !l.trim().is_empty()).count() - header);
        let mut got: Vec<&str> = json["values"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = task.metrics().to_vec();
        got.sort(); want.sort();
        assert_eq!(got, want, "{task:?}");
    }
}

#[test]
fn an_hf_model_with_one_output_and_no_problem_type_predicts_a_score() {
    // transformers treats num_labels = 1 without a problem_type as regression (a cross-encoder).
    let model = tiny_without_dropout("one-output");
    let dir = tmp("one-output-data");
    std::fs::create_dir_all(&dir).unwrap();
    let (train, _) = label_pattern(&dir, 8, 2);
    let mut a = args(&model, Task::Multilabel, tmp("one-output"));
    (a.train, a.dev, a.epochs) = (train.clone(), train, 1);
    finetune(&a).unwrap();
    let path = a.out.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let o = cfg.as_object_mut().unwrap();
    for k in ["problem_type", "engram_task"] {
        o.remove(k);
    }
    o.insert("id2label".into(), serde_json::json!({ "0": "LABEL_0" }));
    o.insert("label2id".into(), serde_json::json!({ "LABEL_0": 0 }));
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    // The head has two rows; a one-output model has one: cut classifier.* to its first row.
    let mut w = read_safetensors(a.out.join("model.safetensors")).unwrap();
    let cw = w["classifier.weight"].to_f64_vec();
    let h = cw.len() / 2;
    w.insert("classifier.weight".into(), engram::Tensor::from_vec(cw[..h].iter().map(|&x| x as f32).collect::<Vec<f32>>(), &[1, h]).unwrap());
    let cb = w["classifier.bias"].to_f64_vec();
    w.insert("classifier.bias".into(), engram::Tensor::from_vec(vec![cb[0] as f32], &[1]).unwrap());
    engram::models::bert::weights::write_safetensors(a.out.join("model.safetensors"), &w, None).unwrap();
    let p = predict_dir(&a.out, &["hello my cat".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let s = p[0]["score"].as_f64().unwrap_or_else(|| panic!("a score, not class probabilities: {}", p[0]));
    assert!(s.is_finite() && p[0].get("probs").is_none(), "{}", p[0]);
}

#[test]
fn eval_steps_evaluates_mid_epoch_keeps_the_best_and_resumes_exactly() {
    let model = root().join("weights/tiny-bert");
    let steps = |dir: &Path| -> Vec<u64> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
        m["epochs"].as_array().unwrap().iter().filter_map(|e| e["step"].as_u64()).collect()
    };
    // 48 examples, batch 8: 6 steps per epoch, 12 in all.
    let mut a = args(&model, Task::Classify, tmp("eval-steps-4"));
    a.eval_steps = Some(4);
    let s = finetune(&a).unwrap();
    assert_eq!(steps(&a.out), vec![4, 8, 12]);
    assert!(s.best_step == 4 || s.best_step == 8 || s.best_step == 12, "{s:?}");
    // trainer_state.json carries transformers' log_history: a training entry per step, then
    // the evaluations at steps 4, 8 and 12 (fractional epochs, 6 steps each), in step order.
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    let log = st["log_history"].as_array().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
    let train: Vec<&serde_json::Value> = log.iter().filter(|e| e.get("loss").is_some()).collect();
    let evals: Vec<&serde_json::Value> = log.iter().filter(|e| e.get("eval_loss").is_some()).collect();
    assert_eq!(train.len(), 12);
    assert_eq!((train[5]["step"].as_u64(), train[5]["epoch"].as_f64()), (Some(6), Some(1.0)));
    assert_eq!((&train[2]["loss"], &train[2]["grad_norm"]), (&m["loss_per_step"][2][1], &m["grad_norm_per_step"][2][1]));
    assert_eq!(train[2]["learning_rate"], m["learning_rate_per_step"][2][1]);
    assert_eq!(evals.iter().map(|e| (e["step"].as_u64().unwrap(), e["epoch"].as_f64().unwrap())).collect::<Vec<_>>(), vec![(4, 0.6667), (8, 1.3333), (12, 2.0)]);
    assert_eq!(evals[1]["eval_accuracy"], m["epochs"][1]["accuracy"]);
    let order: Vec<u64> = log.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]) && log[3].get("loss").is_some() && log[4].get("eval_loss").is_some(), "{log:?}");
    // It has exactly transformers' TrainerState fields (tests/fixtures/trainer_state.py), so
    // TrainerState.load_from_json reads it; our resume counters are in engram_state.json.
    let hf: serde_json::Value = serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/trainer_state_fields.json")).unwrap()).unwrap();
    let mut want: Vec<&str> = hf["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let mut have: Vec<&str> = st.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "trainer_state.json keys against transformers {}", hf["transformers"]);
    assert_eq!((st["global_step"].as_u64(), st["max_steps"].as_u64(), st["epoch"].as_f64()), (Some(12), Some(12), Some(2.0)));
    assert_eq!((st["eval_steps"].as_u64(), st["train_batch_size"].as_u64(), st["num_train_epochs"].as_u64()), (Some(4), Some(8), Some(2)));
    assert_eq!(st["best_global_step"].as_u64(), Some(s.best_step));
    assert_eq!(st["best_metric"].as_f64(), Some(s.best_metric));
    assert!(st["num_input_tokens_seen"].as_u64().unwrap() > 48 * 2 * 3, "{}", st["num_input_tokens_seen"]);
    assert!(a.out.join("checkpoint/engram_state.json").is_file());
    // Every 5 steps, and once more after the last one.
    let mut full = args(&model, Task::Classify, tmp("eval-steps-5"));
    full.eval_steps = Some(5);
    let s = finetune(&full).unwrap();
    assert_eq!(steps(&full.out), vec![5, 10, 12]);
    // The model in OUT is the best evaluation's: re-evaluated, it scores the best metric.
    let (_, json) = engram::train::evaluate_dir(&full.out, &full.dev, &EvalOptions { max_length: 128, device: engram::Device::Cpu, precision: Precision::F32, ..Default::default() }).unwrap();
    assert_eq!(json["values"]["accuracy"].as_f64().unwrap(), s.best_metric, "{s:?}");
    // Interrupted between two evaluations and resumed: the same weights and the same evaluations.
    let mut part = full.clone();
    part.out = tmp("eval-steps-5-part");
    part.stop_after_steps = Some(7);
    finetune(&part).unwrap();
    (part.stop_after_steps, part.resume) = (None, true);
    let r = finetune(&part).unwrap();
    assert!(std::fs::read(full.out.join("checkpoint/model.safetensors")).unwrap() == std::fs::read(part.out.join("checkpoint/model.safetensors")).unwrap());
    assert_eq!(steps(&part.out), vec![5, 10, 12]);
    assert_eq!((r.best_metric, r.best_step), (s.best_metric, s.best_step));
    // Patience counts evaluations: with lr 0 nothing improves after the first one.
    let mut p = args(&model, Task::Classify, tmp("eval-steps-patience"));
    (p.eval_steps, p.patience, p.lr) = (Some(2), Some(2), 0.0);
    let s = finetune(&p).unwrap();
    assert!(s.stopped_early && s.global_step == 6 && s.best_step == 2, "{s:?}");
    assert_eq!(steps(&p.out), vec![2, 4, 6]);
    p.eval_steps = Some(0);
    let e = finetune(&p).unwrap_err().to_string();
    assert!(e.contains("--eval-steps"), "{e}");
    // --early-stopping-threshold: a gain no larger than it counts against the patience, but the
    // better model is still kept. Dev loss (lower is better) while it trains; no gain can pass 10.
    let mut t = args(&model, Task::Ner, tmp("eval-steps-threshold"));
    // (The metric as transformers' metric_for_best_model may name it, with "eval_".)
    (t.eval_steps, t.patience, t.metric, t.early_stopping_threshold, t.lr, t.batch_size) = (Some(2), Some(1), "eval_loss".into(), 10.0, 5e-3, 4);
    let s = finetune(&t).unwrap();
    assert!(s.stopped_early && s.global_step == 4, "{s:?}");
    assert_eq!(s.metric, "loss");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(t.out.join("metrics.json")).unwrap()).unwrap();
    let losses: Vec<f64> = m["epochs"].as_array().unwrap().iter().filter_map(|e| e["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 2, "{m}");
    assert_eq!(s.best_step, if losses[1] < losses[0] { 4 } else { 2 }, "the best model is kept on any gain: {losses:?}");
    assert!(losses[1] < losses[0], "this recipe's dev loss falls by step 4, so the threshold is what stopped it: {losses:?}");
    t.early_stopping_threshold = 0.0;
    assert!(finetune(&t).unwrap().global_step > 4, "without the threshold that gain resets the patience");
    t.early_stopping_threshold = -1.0;
    let e = finetune(&t).unwrap_err().to_string();
    assert!(e.contains("--early-stopping-threshold"), "{e}");
}

#[test]
fn group_by_length_trains_resumes_exactly_and_is_a_resume_flag() {
    let model = root().join("weights/tiny-bert");
    let mut full = args(&model, Task::Classify, tmp("grouped"));
    full.group_by_length = true;
    finetune(&full).unwrap();
    let plain = args(&model, Task::Classify, tmp("ungrouped"));
    finetune(&plain).unwrap();
    let w = |a: &FinetuneArgs| std::fs::read(a.out.join("checkpoint/model.safetensors")).unwrap();
    assert!(w(&full) != w(&plain), "grouping changes the batches, so the weights");
    let mut part = full.clone();
    part.out = tmp("grouped-part");
    part.stop_after_steps = Some(4);
    finetune(&part).unwrap();
    part.group_by_length = false;
    part.stop_after_steps = None;
    part.resume = true;
    let e = finetune(&part).unwrap_err().to_string();
    assert!(e.contains("--group-by-length"), "{e}");
    part.group_by_length = true;
    finetune(&part).unwrap();
    assert!(w(&full) == w(&part), "resumed grouped run differs from the uninterrupted one");
}

#[test]
fn a_checkpoint_with_only_vocab_txt_finetunes_and_gets_a_tokenizer_json() {
    let src = root().join("weights/tiny-bert");
    let dir = tmp("vocab-only");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tj: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
    let mut v: Vec<(String, u64)> = tj["model"]["vocab"].as_object().unwrap().iter().map(|(k, i)| (k.clone(), i.as_u64().unwrap())).collect();
    v.sort_by_key(|x| x.1);
    std::fs::write(dir.join("vocab.txt"), v.iter().map(|x| format!("{}\n", x.0)).collect::<String>()).unwrap();
    let mut a = args(&dir, Task::Classify, tmp("vocab-only-out"));
    a.epochs = 1;
    finetune(&a).unwrap();
    for f in ["vocab.txt", "tokenizer.json"] {
        assert!(a.out.join(f).is_file(), "{f} missing from the output");
    }
    let from_vocab = predict_dir(&a.out, &["the cat sat on my mat".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    std::fs::remove_file(a.out.join("tokenizer.json")).unwrap();
    let rebuilt = predict_dir(&a.out, &["the cat sat on my mat".to_string()], 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    assert_eq!(from_vocab, rebuilt, "the written tokenizer.json is the one built from vocab.txt");
}

#[test]
fn label_smoothing_reaches_the_loss() {
    // Dropout off: the two runs differ only by ε (the op itself is checked against PyTorch's
    // label_smoothing in ops.json). From the same logits the first losses differ a little (two
    // nearly uniform classes at the start), and the weights then part.
    let model = tiny_without_dropout("smoothing");
    let plain = args(&model, Task::Classify, tmp("smooth-0"));
    let mut smooth = plain.clone();
    smooth.out = tmp("smooth-1");
    smooth.label_smoothing = 0.1;
    finetune(&plain).unwrap();
    finetune(&smooth).unwrap();
    let first = |a: &FinetuneArgs| -> f64 {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
        m["loss_per_step"][0][1].as_f64().unwrap()
    };
    let (l0, l1) = (first(&plain), first(&smooth));
    assert!(l0 != l1 && (l0 - l1).abs() < 0.1 * l0, "step-1 loss {l0} vs smoothed {l1}");
    assert!(weights(&plain.out.join("checkpoint")) != weights(&smooth.out.join("checkpoint")));
}

#[test]
fn class_weights_reach_the_loss_normalised_resume_exactly_and_are_a_resume_flag() {
    // SGD without clipping, so the gradient's scale reaches the weights (AdamW would hide it):
    // the loss divides by the targets' total weight, so weights ×2 train exactly as weights ×1,
    // all-ones weights as no weights, and unequal ones differently.
    let model = tiny_without_dropout("class-weights");
    let mut plain = args(&model, Task::Classify, tmp("cw-plain"));
    (plain.optimizer, plain.max_grad_norm, plain.lr) = (OptimizerKind::Sgd, 0.0, 0.05);
    let run = |tag: &str, spec: Option<&str>| -> FinetuneArgs {
        let mut a = plain.clone();
        a.out = tmp(tag);
        a.class_weights = spec.map(|s| s.parse::<ClassWeights>().unwrap());
        finetune(&a).unwrap();
        a
    };
    let close = max_weight_diff;
    finetune(&plain).unwrap();
    let ones = run("cw-ones", Some("pos=1,neg=1"));
    let balanced = run("cw-balanced", Some("balanced"));
    let one_two = run("cw-1-3", Some("pos=1,neg=3"));
    let two_six = run("cw-2-6", Some("neg=6,pos=2"));
    assert!(close(&plain, &ones) < 1e-6, "all-ones weights train as no weights: {}", close(&plain, &ones));
    // tiny_train.csv has 24 pos and 24 neg: balanced weighs both 1.
    assert!(close(&plain, &balanced) < 1e-6, "balanced on balanced data: {}", close(&plain, &balanced));
    assert!(close(&one_two, &two_six) < 1e-6, "the loss is normalised by the weights: {}", close(&one_two, &two_six));
    assert!(close(&plain, &one_two) > 1e-3, "unequal weights change training: {}", close(&plain, &one_two));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(one_two.out.join("checkpoint/engram_state.json")).unwrap()).unwrap();
    let (labels, w) = (state["labels"].as_array().unwrap(), state["class_weights"].as_array().unwrap());
    let of = |l: &str| w[labels.iter().position(|x| x == l).unwrap()].as_f64().unwrap();
    assert_eq!((of("pos"), of("neg")), (1.0, 3.0));
    let card = std::fs::read_to_string(one_two.out.join("README.md")).unwrap();
    assert!(card.contains("- class_weights: given (") && card.contains("neg 3.0000"), "{card}");

    // An interrupted weighted run resumes to the same bits; other weights on resume are refused.
    let mut part = one_two.clone();
    part.out = tmp("cw-part");
    part.stop_after_steps = Some(4);
    finetune(&part).unwrap();
    (part.stop_after_steps, part.resume) = (None, true);
    let mut other = part.clone();
    other.class_weights = Some("balanced".parse().unwrap());
    let e = finetune(&other).unwrap_err().to_string();
    assert!(e.contains("training_args.json") && e.contains("--class-weights"), "{e}");
    other.class_weights = None;
    assert!(finetune(&other).unwrap_err().to_string().contains("--class-weights"));
    finetune(&part).unwrap();
    let bytes = |a: &FinetuneArgs| std::fs::read(a.out.join("checkpoint/model.safetensors")).unwrap();
    assert!(bytes(&part) == bytes(&one_two), "resumed weighted run differs from the uninterrupted one");

    // Token classification: balanced weights n / (k · count) over the words' tags; a tag with no
    // training word (I-thing) weighs 1.
    let mut ner = args(&model, Task::Ner, tmp("cw-ner"));
    ner.epochs = 1;
    ner.class_weights = Some(ClassWeights::Balanced);
    finetune(&ner).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(ner.out.join("checkpoint/engram_state.json")).unwrap()).unwrap();
    let (labels, w) = (state["labels"].as_array().unwrap(), state["class_weights"].as_array().unwrap());
    let got: Vec<(String, f64)> = labels.iter().zip(w).map(|(l, w)| (l.as_str().unwrap().to_string(), w.as_f64().unwrap())).collect();
    let want = [("B-animal", 144.0 / (4.0 * 24.0)), ("B-thing", 144.0 / (4.0 * 14.0)), ("I-animal", 144.0 / (4.0 * 24.0)), ("I-thing", 1.0), ("O", 144.0 / (4.0 * 82.0))];
    for (l, v) in want {
        let g = got.iter().find(|(x, _)| x == l).unwrap_or_else(|| panic!("no {l} in {got:?}")).1;
        assert!((g - v).abs() < 1e-12, "{l}: {g} vs {v}");
    }

    // Refused: a label the model does not have (naming the training file), multilabel, bad specs.
    let mut bad = plain.clone();
    bad.out = tmp("cw-bad");
    bad.class_weights = Some("pos=1,maybe=2".parse().unwrap());
    let e = finetune(&bad).unwrap_err().to_string();
    assert!(e.contains("tiny_train.csv") && e.contains("\"maybe\""), "{e}");
    assert!(!bad.out.join("checkpoint").exists(), "a refused run wrote a checkpoint");
    for (spec, says) in [("pos", "LABEL=WEIGHT"), ("pos=x", "not a number"), ("pos=-1", "non-negative"), ("pos=1,pos=2", "twice"), ("pos=inf", "finite")] {
        let e = spec.parse::<ClassWeights>().unwrap_err();
        assert!(e.contains(says), "{spec}: {e}");
    }
}

#[test]
fn multilabel_class_weights_are_bce_positive_weights() {
    // Labels on the tiny texts: "a" on one row in four, "b" on every other row. Balanced
    // positive weights are negatives / positives: a 36/12 = 3, b 24/24 = 1.
    let model = tiny_without_dropout("pos-weight");
    let d = root().join("tests/fixtures/data");
    let dir = tmp("pos-weight-data");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tiny_train.csv", "tiny_dev.csv"] {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        let rows: String = text.lines().skip(1).enumerate().map(|(i, l)| {
            let labels: Vec<&str> = [("a", i % 4 == 0), ("b", i % 2 == 0)].iter().filter(|x| x.1).map(|x| x.0).collect();
            format!("{}\n", serde_json::json!({"text": l.rsplit_once(',').unwrap().0, "labels": labels}))
        }).collect();
        std::fs::write(dir.join(f.replace(".csv", ".jsonl")), rows).unwrap();
    }
    let mut plain = args(&model, Task::Multilabel, tmp("pw-plain"));
    (plain.train, plain.dev, plain.metric) = (dir.join("tiny_train.jsonl"), dir.join("tiny_dev.jsonl"), "micro_f1".into());
    (plain.optimizer, plain.max_grad_norm, plain.lr) = (OptimizerKind::Sgd, 0.0, 0.05);
    finetune(&plain).unwrap();
    let run = |tag: &str, spec: &str| -> FinetuneArgs {
        let mut a = plain.clone();
        (a.out, a.class_weights) = (tmp(tag), Some(spec.parse().unwrap()));
        finetune(&a).unwrap();
        a
    };
    let diff = max_weight_diff;
    let ones = run("pw-ones", "a=1,b=1");
    let balanced = run("pw-balanced", "balanced");
    assert!(diff(&plain, &ones) < 1e-6, "positive weights of 1 train as none: {}", diff(&plain, &ones));
    assert!(diff(&plain, &balanced) > 1e-3, "positive weights change training: {}", diff(&plain, &balanced));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(balanced.out.join("checkpoint/engram_state.json")).unwrap()).unwrap();
    assert_eq!((&state["labels"], &state["class_weights"]), (&serde_json::json!(["a", "b"]), &serde_json::json!([3.0, 1.0])));
    let card = std::fs::read_to_string(balanced.out.join("README.md")).unwrap();
    assert!(card.contains("- pos_weight: balanced (a 3.0000, b 1.0000)\n"), "{card}");
    // Regression has no classes to weigh.
    let mut reg = plain.clone();
    (reg.task, reg.metric, reg.class_weights, reg.out) = (Task::Regression, "pearson".into(), Some(ClassWeights::Balanced), tmp("pw-reg"));
    assert!(finetune(&reg).unwrap_err().to_string().contains("not to regression"));
}

/// tiny_*.conll as an HF datasets export writes it: JSONL with `tokens` and integer `ner_tags`
/// (ids into `names`).
fn conll_as_ids(conll: &Path, names: &[&str], out: &Path) {
    let mut lines = String::new();
    for sent in std::fs::read_to_string(conll).unwrap().split("\n\n").filter(|s| !s.trim().is_empty()) {
        let (words, ids): (Vec<&str>, Vec<usize>) = sent
            .lines()
            .map(|l| {
                let (w, t) = l.rsplit_once(char::is_whitespace).unwrap();
                (w.trim(), names.iter().position(|n| *n == t).unwrap())
            })
            .unzip();
        lines += &format!("{}\n", serde_json::json!({"id": "x", "tokens": words, "ner_tags": ids}));
    }
    std::fs::write(out, lines).unwrap();
}

#[test]
fn ner_class_ids_with_label_names_train_as_the_named_tags() {
    let model = root().join("weights/tiny-bert");
    let d = root().join("tests/fixtures/data");
    let dir = tmp("ids");
    std::fs::create_dir_all(&dir).unwrap();
    // In the order engram sorts the tags itself, the run is the CoNLL run, bit for bit.
    let sorted = ["B-animal", "B-thing", "I-animal", "I-thing", "O"];
    conll_as_ids(&d.join("tiny_train.conll"), &sorted, &dir.join("train.jsonl"));
    conll_as_ids(&d.join("tiny_dev.conll"), &sorted, &dir.join("dev.jsonl"));
    let conll = args(&model, Task::Ner, tmp("ids-conll"));
    finetune(&conll).unwrap();
    let mut ids = conll.clone();
    (ids.train, ids.dev, ids.test, ids.out) = (dir.join("train.jsonl"), dir.join("dev.jsonl"), Some(dir.join("dev.jsonl")), tmp("ids-jsonl"));
    ids.label_names = Some(sorted.map(String::from).to_vec());
    finetune(&ids).unwrap();
    let bytes = |a: &FinetuneArgs| std::fs::read(a.out.join("model.safetensors")).unwrap();
    assert!(bytes(&conll) == bytes(&ids), "class ids named in engram's order train as the CoNLL tags");
    // `eval` reads class ids as the model's label ids, with the same scores as the tag names.
    let opts = EvalOptions { max_length: 64, ..Default::default() };
    let (_, by_name) = engram::train::evaluate_dir(&conll.out, &conll.dev, &opts).unwrap();
    let (_, by_id) = engram::train::evaluate_dir(&conll.out, &dir.join("dev.jsonl"), &opts).unwrap();
    assert_eq!(by_name["values"], by_id["values"]);
    // Another order (the dataset's) is the model's label order.
    let names = ["O", "B-animal", "I-animal", "B-thing", "I-thing"];
    conll_as_ids(&d.join("tiny_train.conll"), &names, &dir.join("train2.jsonl"));
    let mut other = ids.clone();
    (other.train, other.dev, other.test, other.out) = (dir.join("train2.jsonl"), d.join("tiny_dev.conll"), None, tmp("ids-order"));
    other.label_names = Some(names.map(String::from).to_vec());
    finetune(&other).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(other.out.join("config.json")).unwrap()).unwrap();
    let id2label: Vec<&str> = (0..5).map(|i| cfg["id2label"][i.to_string()].as_str().unwrap()).collect();
    assert_eq!(id2label, names);
    // Class ids without names are refused, naming the file; so are ids past the names.
    let mut bare = ids.clone();
    (bare.label_names, bare.out) = (None, tmp("ids-bare"));
    let e = finetune(&bare).unwrap_err().to_string();
    assert!(e.contains("train.jsonl") && e.contains("--label-names"), "{e}");
    bare.label_names = Some(sorted[..3].iter().map(|s| s.to_string()).collect());
    let e = finetune(&bare).unwrap_err().to_string();
    assert!(e.contains("train.jsonl") && e.contains("is not a class id in 0..3"), "{e}");
    bare.label_names = Some(vec!["O".into(), "O".into()]);
    assert!(finetune(&bare).unwrap_err().to_string().contains("given twice"));
    assert!(!bare.out.join("checkpoint").exists(), "a refused run wrote a checkpoint");
    // Sequence classification: GLUE-style 0/1 labels named.
    for (f, src) in [("train.csv", "tiny_train.csv"), ("dev.csv", "tiny_dev.csv")] {
        let text: String = std::fs::read_to_string(d.join(src)).unwrap().lines().map(|l| format!("{}\n", l.replace(",neg", ",0").replace(",pos", ",1"))).collect();
        std::fs::write(dir.join(f), text).unwrap();
    }
    let mut seq = args(&model, Task::Classify, tmp("ids-seq"));
    (seq.train, seq.dev, seq.label_names, seq.epochs) = (dir.join("train.csv"), dir.join("dev.csv"), Some(vec!["negative".into(), "positive".into()]), 1);
    finetune(&seq).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(seq.out.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["id2label"]["0"].as_str(), cfg["id2label"]["1"].as_str()), (Some("negative"), Some("positive")), "{cfg}");
}

#[test]
fn bf16_autocast_trains_close_to_f32_resumes_exactly_and_is_a_resume_flag() {
    // The tiny BERT (hidden 32) on the synthetic pattern: bf16 GEMMs change the numbers a little,
    // never the story. Dropout on, as in real fine-tuning.
    let model = root().join("weights/tiny-bert");
    let plain = args(&model, Task::Classify, tmp("bf16-off"));
    let mut full = plain.clone();
    full.out = tmp("bf16-on");
    full.bf16 = true;
    finetune(&plain).unwrap();
    finetune(&full).unwrap();
    let losses = |a: &FinetuneArgs| -> Vec<f64> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
        m["loss_per_step"].as_array().unwrap().iter().map(|s| s[1].as_f64().unwrap()).collect()
    };
    let (l32, l16) = (losses(&plain), losses(&full));
    assert_eq!(l32.len(), l16.len());
    assert!(l32 != l16, "--bf16 must reach the arithmetic");
    // Step 1 sees the same weights: the losses differ by bf16 rounding of the products only.
    assert!((l32[0] - l16[0]).abs() < 0.01 * l32[0], "step-1 loss f32 {} vs bf16 {}", l32[0], l16[0]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!((mean(&l32) - mean(&l16)).abs() < 0.05 * mean(&l32), "mean loss f32 {} vs bf16 {}", mean(&l32), mean(&l16));
    // Parameters stay f32 (master weights) and the saved model is an ordinary f32 checkpoint.
    let saved = read_safetensors(full.out.join("model.safetensors")).unwrap();
    assert!(saved.values().all(|t| t.dtype() == engram::DType::F32));
    // Exact resume, and --bf16 may not change across it.
    let mut part = full.clone();
    part.out = tmp("bf16-part");
    part.stop_after_steps = Some(3);
    finetune(&part).unwrap();
    part.stop_after_steps = None;
    part.resume = true;
    part.bf16 = false;
    let e = finetune(&part).unwrap_err().to_string();
    assert!(e.contains("--bf16") && e.contains("training_args.json"), "{e}");
    part.bf16 = true;
    finetune(&part).unwrap();
    let w = |a: &FinetuneArgs| std::fs::read(a.out.join("checkpoint/model.safetensors")).unwrap();
    assert!(w(&full) == w(&part), "resumed bf16 run differs from the uninterrupted one");
    // Predictions in bf16 from the saved model: same labels as f32 inference on these inputs
    // (the tiny model's margins are far above bf16 rounding), probabilities close.
    let texts: Vec<String> = ["good fun great", "bad awful dull", "a plain sentence", "great"].iter().map(|s| s.to_string()).collect();
    let p32 = predict_dir(&full.out, &texts, 64, 8, engram::Device::Cpu, Precision::F32, false, None).unwrap();
    let p16 = predict_dir(&full.out, &texts, 64, 8, engram::Device::Cpu, Precision::Bf16, false, None).unwrap();
    assert!(p32 != p16, "Precision::Bf16 must reach inference");
    for (a, b) in p32.iter().zip(&p16) {
        assert_eq!(a["label"], b["label"]);
        let (pa, pb) = (a["probs"].as_object().unwrap(), b["probs"].as_object().unwrap());
        for (k, v) in pa {
            assert!((v.as_f64().unwrap() - pb[k].as_f64().unwrap()).abs() < 0.02, "{k}: {v} vs {}", pb[k]);
        }
    }
}

/// `--lr-scheduler` and `--warmup-steps` reach the optimizer: the learning rate of every step in
/// metrics.json is the schedule's (itself checked against transformers in tests/optim.rs), the
/// warmup in steps wins over the ratio, AdamW's β/ε flags change the run, and bad ones are errors.
#[test]
fn lr_scheduler_warmup_steps_and_adam_flags_reach_training() {
    use engram::optim::{Schedule, ScheduleKind};
    let model = root().join("weights/tiny-bert");
    for kind in [ScheduleKind::Cosine, ScheduleKind::ConstantWithWarmup, ScheduleKind::Linear] {
        let mut a = args(&model, Task::Classify, tmp(&format!("sched-{}", kind.name())));
        a.lr_scheduler = kind;
        a.warmup_steps = Some(3);
        finetune(&a).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
        let lrs = m["learning_rate_per_step"].as_array().unwrap();
        let total = lrs.len() as u64;
        assert!(total >= 6, "{}: {total} steps", kind.name());
        let want = Schedule { kind, base_lr: a.lr, warmup: 3, total };
        for (i, e) in lrs.iter().enumerate() {
            let (step, lr) = (e[0].as_u64().unwrap(), e[1].as_f64().unwrap());
            assert_eq!(step, i as u64 + 1);
            assert!((lr - want.lr(i as u64)).abs() <= 1e-15, "{} step {step}: lr {lr} vs {}", kind.name(), want.lr(i as u64));
        }
        assert_eq!(lrs[0][1].as_f64().unwrap(), 0.0, "warmup starts at 0");
        assert!((lrs[3][1].as_f64().unwrap() - a.lr).abs() < 1e-15, "{}: the 4th update (after 3 warmup steps) takes the full lr", kind.name());
    }
    // AdamW's hyper-parameters: another β₂ gives other weights; out-of-range values are errors.
    let mut a = args(&model, Task::Classify, tmp("adam-default"));
    a.epochs = 1;
    let mut b = a.clone();
    b.out = tmp("adam-beta2");
    b.adam.1 = 0.98;
    finetune(&a).unwrap();
    finetune(&b).unwrap();
    assert!(weights(&a.out) != weights(&b.out), "--adam-beta2 had no effect");
    for (adam, flag) in [((1.0, 0.999, 1e-8), "--adam-beta1"), ((0.9, -0.1, 1e-8), "--adam-beta2"), ((0.9, 0.999, 0.0), "--adam-epsilon")] {
        let mut c = a.clone();
        c.out = tmp("adam-bad");
        c.adam = adam;
        let e = finetune(&c).unwrap_err().to_string();
        assert!(e.contains(flag), "{e}");
        assert!(!c.out.exists(), "nothing is written for bad flags");
    }
}

/// `--max-steps` (transformers' `max_steps`) wins over `--epochs`: exactly N optimizer steps,
/// ⌈N / steps per epoch⌉ epochs with the last one cut short and still evaluated, the schedule
/// decaying to 0 at step N; 0 is an error.
#[test]
fn max_steps_trains_exactly_n_steps_over_a_short_last_epoch() {
    let model = root().join("weights/tiny-bert");
    let mut a = args(&model, Task::Classify, tmp("max-steps"));
    a.epochs = 50; // ignored
    a.batch_size = 8;
    a.warmup_ratio = 0.0;
    let train_rows = std::fs::read_to_string(&a.train).unwrap().lines().count() - 1;
    let per_epoch = train_rows.div_ceil(8) as u64;
    let n = per_epoch + per_epoch / 2 + 1; // one and a half epochs
    a.max_steps = Some(n);
    let s = finetune(&a).unwrap();
    assert_eq!(s.global_step, n);
    assert_eq!(s.epochs_run, 2);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.out.join("metrics.json")).unwrap()).unwrap();
    let evals: Vec<u64> = m["epochs"].as_array().unwrap().iter().filter_map(|e| e["step"].as_u64()).collect();
    assert_eq!(evals, vec![per_epoch, n], "an evaluation after each epoch, the short one included");
    let lrs = m["learning_rate_per_step"].as_array().unwrap();
    assert_eq!(lrs.len() as u64, n);
    let last = lrs[lrs.len() - 1][1].as_f64().unwrap();
    assert!((last - a.lr / n as f64).abs() < 1e-15, "the linear schedule ends at step N: last lr {last}");
    let mut bad = a.clone();
    bad.out = tmp("max-steps-0");
    bad.max_steps = Some(0);
    assert!(finetune(&bad).unwrap_err().to_string().contains("--max-steps"));
    // Interrupted inside the short last epoch and resumed (cosine schedule, warmup in steps):
    // the same weights and learning rates, bit for bit, as the uninterrupted run.
    let mut full = a.clone();
    full.out = tmp("max-steps-full");
    full.lr_scheduler = engram::optim::ScheduleKind::Cosine;
    full.warmup_steps = Some(2);
    finetune(&full).unwrap();
    let mut part = full.clone();
    part.out = tmp("max-steps-part");
    part.stop_after_steps = Some(n - 2);
    finetune(&part).unwrap();
    part.stop_after_steps = None;
    part.resume = true;
    finetune(&part).unwrap();
    let w = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
    assert!(w(&full.out) == w(&part.out), "resumed --max-steps run differs from the uninterrupted one");
    let lr = |d: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(d.join("metrics.json")).unwrap()).unwrap()["learning_rate_per_step"].clone();
    assert_eq!(lr(&full.out), lr(&part.out));
}

/// `--gradient-checkpointing` trains the same model bit for bit (dropout on, two epochs, AdamW,
/// gradient accumulation) — in bf16 autocast too. Through recurrent memory segments (truncated
/// backpropagation: the segments before the cut run on a no-grad tape) every segment reuses the
/// layer weights, and a plain tape adds each segment's weight gradient straight onto the running
/// sum where a checkpointed one adds a segment's whole, so there the weights agree to rounding.
#[test]
fn gradient_checkpointing_trains_the_same_weights() {
    let model = root().join("weights/tiny-bert");
    for (tag, bf16, memory) in [("f32", false, None), ("bf16", true, None), ("memory", false, Some(engram::memory::MemoryConfig::memory(2, 4, Some(2))))] {
        let mut a = args(&model, Task::Classify, tmp(&format!("ckpt-plain-{tag}")));
        a.grad_accum = 2;
        a.bf16 = bf16;
        if memory.is_some() {
            a.memory = memory;
            a.max_length = 64;
        }
        let mut c = a.clone();
        c.out = tmp(&format!("ckpt-on-{tag}"));
        c.gradient_checkpointing = true;
        finetune(&a).unwrap();
        finetune(&c).unwrap();
        let w = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
        assert!(w(&a.out) != std::fs::read(model.join("model.safetensors")).unwrap());
        if a.memory.is_none() {
            assert!(w(&a.out) == w(&c.out), "{tag}: checkpointed training differs from plain");
        } else {
            let (wa, wc) = (weights(&a.out.join("checkpoint")), weights(&c.out.join("checkpoint")));
            for ((n, x), (_, y)) in wa.iter().zip(&wc) {
                engram::testing::assert_close(&format!("{tag} {n}"), y, x, 1e-6, 1e-4);
            }
        }
    }
}

//! The model card a fine-tuned directory gets as `README.md`, in the shape transformers'
//! `Trainer.create_model_card` writes: YAML metadata for the Hub (`library_name`, `tags`,
//! `pipeline_tag`, `metrics`, a `model-index` with the results), then the results on the
//! evaluation set, the hyperparameters and a table of the evaluations. It is rewritten with
//! `metrics.json` after every evaluation, so an interrupted run's card says how far it got.

use super::trainer::{ClassWeights, FinetuneArgs, OptimizerKind, Task};
use super::Aggregation;
use serde_json::Value;
use std::fmt::Write;

/// What a card reports besides the arguments: the evaluation history (`metrics.json`'s
/// `epochs`: one entry per dev evaluation, then `{"test": ...}` when a test split was scored)
/// and the best evaluation's epoch.
pub struct CardInputs<'a> {
    pub history: &'a [Value],
    pub best_epoch: Option<usize>,
    pub best_step: Option<u64>,
    /// Optimizer steps of one epoch (for the fractional epochs of `--eval-steps`).
    pub steps_per_epoch: u64,
    /// The labels and, with `--class-weights`, the loss's weight of each.
    pub labels: &'a [String],
    pub class_weights: Option<&'a [f64]>,
}

/// The dev evaluations of a run's history (`metrics.json`'s `epochs`), in order.
pub fn evaluations(history: &[Value]) -> impl Iterator<Item = &Value> {
    history.iter().filter(|h| h.get("epoch").is_some())
}

/// The evaluation at the best step, if there was one.
pub fn best_evaluation(history: &[Value], best_step: Option<u64>) -> Option<&Value> {
    best_step.and_then(|b| evaluations(history).find(|h| h["step"].as_u64() == Some(b)))
}

/// The test split's entry (`{"metrics": ..., "values": ...}`), when it was scored.
pub fn test_entry(history: &[Value]) -> Option<&Value> {
    history.iter().find_map(|h| h.get("test"))
}

/// The Hub's task names.
fn pipeline_tag(task: Task) -> &'static str {
    match task {
        Task::Ner => "token-classification",
        _ => "text-classification",
    }
}

fn task_title(task: Task) -> &'static str {
    match task {
        Task::Ner => "Token Classification",
        _ => "Text Classification",
    }
}

/// `entity_f1` → "Entity F1", as the Trainer titles metric names.
fn title(metric: &str) -> String {
    metric
        .split('_')
        .map(|w| match w {
            "f1" => "F1".to_string(),
            "mse" | "mae" => w.to_uppercase(),
            _ => {
                let mut c = w.chars();
                c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number as the Trainer's card prints it: 4 decimals.
fn num(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |x| format!("{x:.4}"))
}

/// A file's name for the card (no directories: they are this machine's).
fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The dataset a training file stands for: its name without the extension, or its folder's
/// name when the file is only "train" (`wnut16/train.conll` → `wnut16`).
fn dataset_name(p: &std::path::Path) -> String {
    let stem = p.file_stem().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let folder = p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
    match folder {
        Some(f) if ["train", "training"].contains(&stem.to_lowercase().as_str()) => f,
        _ => stem,
    }
}

/// A YAML-safe scalar: quoted unless plainly alphanumeric.
fn yaml(s: &str) -> String {
    if s.starts_with(|c: char| c.is_ascii_alphanumeric()) && !s.ends_with(' ') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)) {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialise")
    }
}

/// The card's text.
pub fn model_card(args: &FinetuneArgs, inputs: &CardInputs) -> String {
    let name = file_name(&args.out);
    let base = file_name(&args.model);
    let dataset = dataset_name(&args.train);
    let evals: Vec<&Value> = evaluations(inputs.history).collect();
    let test = test_entry(inputs.history);
    let best = best_evaluation(inputs.history, inputs.best_step).or(evals.last().copied());
    // The reported results: the test split's when it was scored, else the best dev evaluation's.
    let (results_of, results): (String, Vec<(String, Value)>) = match (test, best) {
        (Some(t), _) => {
            let values = t["values"].as_object().cloned().unwrap_or_default();
            let mut r: Vec<(String, Value)> = vec![("loss".to_string(), t["metrics"]["loss"].clone())];
            r.extend(values.into_iter().filter(|(k, _)| k != "loss"));
            (format!("test set (`{}`)", args.test.as_deref().map(file_name).unwrap_or_default()), r)
        }
        (None, Some(b)) => (
            format!("evaluation set (`{}`, best evaluation: epoch {}, step {})", file_name(&args.dev), b["epoch"], b["step"]),
            vec![("loss".to_string(), b["dev"]["loss"].clone()), (args.metric.clone(), b[&args.metric].clone())],
        ),
        (None, None) => (String::new(), Vec::new()),
    };

    let mut s = String::new();
    // Metadata.
    s.push_str("---\nlibrary_name: transformers\ntags:\n- engram\n- generated_from_trainer\n");
    let _ = writeln!(s, "pipeline_tag: {}", pipeline_tag(args.task));
    let _ = writeln!(s, "metrics:\n- {}", yaml(&args.metric));
    let _ = write!(s, "model-index:\n- name: {}\n  results:", yaml(&name));
    let scored: Vec<&(String, Value)> = results.iter().filter(|(k, v)| k != "loss" && v.is_number()).collect();
    if scored.is_empty() {
        s.push_str(" []\n");
    } else {
        s.push('\n');
        let split = if test.is_some() { "test" } else { "validation" };
        let _ = writeln!(s, "  - task:\n      type: {}\n      name: {}", pipeline_tag(args.task), task_title(args.task));
        let _ = writeln!(s, "    dataset:\n      name: {}\n      type: {}\n      split: {split}", yaml(&dataset), yaml(&dataset));
        s.push_str("    metrics:\n");
        for (k, v) in scored {
            let _ = writeln!(s, "    - type: {}\n      value: {}\n      name: {}", yaml(k), v, yaml(&title(k)));
        }
    }
    s.push_str("---\n\n");
    s.push_str("<!-- Written by engram finetune with the model; edit it freely (a later run into this directory rewrites it). -->\n\n");

    // What it is and how well it does.
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "This model is a fine-tuned version of `{base}` for {} ({}) on {dataset} (`{}`), trained with engram {}.",
        task_title(args.task).to_lowercase(),
        serde_json::to_value(args.task).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        file_name(&args.train),
        env!("CARGO_PKG_VERSION")
    );
    if results.is_empty() {
        s.push_str("It has not been evaluated yet.\n");
    } else {
        let _ = writeln!(s, "It achieves the following results on the {results_of}:");
        for (k, v) in &results {
            let _ = writeln!(s, "- {}: {}", title(k), num(v));
        }
    }

    // How it was trained.
    s.push_str("\n## Training procedure\n\n### Training hyperparameters\n\nThe following hyperparameters were used during training:\n");
    let mut hp: Vec<(String, String)> = vec![
        ("learning_rate".into(), format!("{:e}", args.lr)),
        ("train_batch_size".into(), args.batch_size.to_string()),
        ("eval_batch_size".into(), args.eval_batch_size.to_string()),
        ("seed".into(), args.seed.to_string()),
    ];
    if args.grad_accum > 1 {
        hp.push(("gradient_accumulation_steps".into(), args.grad_accum.to_string()));
        hp.push(("total_train_batch_size".into(), (args.batch_size * args.grad_accum).to_string()));
    }
    let (b1, b2, eps) = args.adam;
    hp.push((
        "optimizer".into(),
        match args.optimizer {
            OptimizerKind::Adamw => format!("AdamW with betas=({b1},{b2}), epsilon={eps:e} and weight_decay={:?}", args.weight_decay),
            OptimizerKind::Sgd => format!("SGD with momentum={} and weight_decay={}", args.momentum, args.weight_decay),
        },
    ));
    hp.push(("lr_scheduler_type".into(), args.lr_scheduler.name().into()));
    match args.warmup_steps {
        Some(w) => hp.push(("lr_scheduler_warmup_steps".into(), w.to_string())),
        None if args.warmup_ratio > 0.0 => hp.push(("lr_scheduler_warmup_ratio".into(), format!("{:?}", args.warmup_ratio))),
        None => {}
    }
    hp.push(("num_epochs".into(), args.epochs.to_string()));
    if let Some(m) = args.max_steps {
        hp.push(("training_steps".into(), m.to_string()));
    }
    hp.push(("max_grad_norm".into(), format!("{:?}", args.max_grad_norm)));
    hp.push(("max_length".into(), args.max_length.to_string()));
    if args.label_smoothing > 0.0 {
        hp.push(("label_smoothing_factor".into(), format!("{:?}", args.label_smoothing)));
    }
    if let (Some(spec), Some(w)) = (&args.class_weights, inputs.class_weights) {
        let how = match spec {
            ClassWeights::Balanced => "balanced",
            ClassWeights::Given(_) => "given",
        };
        let each: Vec<String> = inputs.labels.iter().zip(w).map(|(l, w)| format!("{l} {w:.4}")).collect();
        let name = if args.task == Task::Multilabel { "pos_weight" } else { "class_weights" };
        hp.push((name.into(), format!("{how} ({})", each.join(", "))));
    }
    if args.bf16 {
        hp.push(("mixed_precision_training".into(), "bf16 autocast (linear layers' GEMMs; f32 weights and sums)".into()));
    }
    // Switches shown only when on.
    let switches = [
        (args.gradient_checkpointing, "gradient_checkpointing", "true"),
        (args.freeze_backbone, "frozen_backbone", "true (only the head trained)"),
        (args.group_by_length, "group_by_length", "true"),
        (args.label_all_tokens, "label_all_tokens", "true"),
    ];
    hp.extend(switches.iter().filter(|s| s.0).map(|&(_, k, v)| (k.to_string(), v.to_string())));
    if let Some(p) = args.patience {
        hp.push(("early_stopping_patience".into(), p.to_string()));
        if args.early_stopping_threshold > 0.0 {
            hp.push(("early_stopping_threshold".into(), format!("{:?}", args.early_stopping_threshold)));
        }
    }
    if let Some(st) = args.stride {
        hp.push(("stride".into(), format!("{st} (long inputs read in overlapping windows)")));
    }
    if args.aggregation != Aggregation::First {
        hp.push(("aggregation_strategy".into(), args.aggregation.name().into()));
    }
    if let Some(m) = &args.memory {
        hp.push(("memory_tokens".into(), m.memory_tokens.to_string()));
        hp.push(("segment_len".into(), m.segment_len.to_string()));
        if let Some(k) = m.bptt {
            hp.push(("bptt_segments".into(), k.to_string()));
        }
    }
    for (k, v) in hp {
        let _ = writeln!(s, "- {k}: {v}");
    }

    // One row per dev evaluation.
    if !evals.is_empty() {
        let metric = title(&args.metric);
        let _ = writeln!(s, "\n### Training results\n\n| Training Loss | Epoch | Step | Validation Loss | {metric} |");
        let _ = writeln!(s, "|:-------------:|:-----:|:----:|:---------------:|:{}:|", "-".repeat(metric.len().max(3)));
        for h in &evals {
            let step = h["step"].as_u64().unwrap_or(0);
            let epoch = if inputs.steps_per_epoch > 0 { step as f64 / inputs.steps_per_epoch as f64 } else { h["epoch"].as_f64().unwrap_or(0.0) };
            let mark = if Some(step) == inputs.best_step && inputs.best_epoch.is_some() { " (best)" } else { "" };
            let _ = writeln!(s, "| {} | {epoch:.2} | {step} | {} | {}{mark} |", num(&h["train_loss"]), num(&h["dev"]["loss"]), num(&h[&args.metric]));
        }
    }
    let _ = writeln!(s, "\n### Framework versions\n\n- engram {}", env!("CARGO_PKG_VERSION"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn args() -> FinetuneArgs {
        let mut a = FinetuneArgs::new(PathBuf::from("/w/all-MiniLM-L6-v2"), Task::Ner, PathBuf::from("/d/wnut16/train.conll"), PathBuf::from("/d/wnut16/dev.conll"), PathBuf::from("runs/wnut: minilm"));
        (a.lr, a.epochs, a.batch_size, a.grad_accum, a.metric) = (5e-5, 2, 16, 2, "entity_f1".into());
        a
    }

    fn history() -> Vec<Value> {
        vec![
            json!({"epoch": 1, "step": 10, "train_loss": 1.25, "dev": {"loss": 0.5}, "entity_f1": 0.3}),
            json!({"epoch": 2, "step": 20, "train_loss": 0.75, "dev": {"loss": 0.25}, "entity_f1": 0.41234}),
        ]
    }

    #[test]
    fn a_card_has_hub_metadata_hyperparameters_and_one_row_per_evaluation() {
        let h = history();
        let card = model_card(&args(), &CardInputs { history: &h, best_epoch: Some(2), best_step: Some(20), steps_per_epoch: 10, labels: &[], class_weights: None });
        // YAML front matter the Hub reads; the name with a colon is quoted.
        assert!(card.starts_with("---\nlibrary_name: transformers\n"), "{card}");
        assert!(card.contains("pipeline_tag: token-classification\n"));
        assert!(card.contains("- name: \"wnut: minilm\"\n"), "{card}");
        assert!(card.contains("    - type: entity_f1\n      value: 0.41234\n      name: Entity F1\n"), "{card}");
        assert!(card.contains("      name: wnut16\n") && card.contains("split: validation"), "{card}");
        assert!(card.contains("on wnut16 (`train.conll`)"), "{card}");
        assert!(!card.contains("/w/") && !card.contains("/d/"), "no directories of this machine: {card}");
        assert!(card.contains("fine-tuned version of `all-MiniLM-L6-v2`"));
        assert!(card.contains("- Entity F1: 0.4123\n") && card.contains("- Loss: 0.2500\n"), "{card}");
        assert!(card.contains("- learning_rate: 5e-5\n") && card.contains("- total_train_batch_size: 32\n"), "{card}");
        assert!(card.contains("| 1.2500 | 1.00 | 10 | 0.5000 | 0.3000 |\n"), "{card}");
        assert!(card.contains("| 0.7500 | 2.00 | 20 | 0.2500 | 0.4123 (best) |\n"), "{card}");
        assert!(!card.contains("label_all_tokens"));
    }

    #[test]
    fn the_test_split_when_scored_is_the_reported_result() {
        let mut h = history();
        h.push(json!({"test": {"metrics": {"loss": 0.125}, "values": {"entity_f1": 0.375, "accuracy": 0.9, "loss": 0.125}}}));
        let mut a = args();
        a.test = Some(PathBuf::from("/d/wnut16/test.conll"));
        (a.label_all_tokens, a.aggregation) = (true, Aggregation::Max);
        a.class_weights = Some(ClassWeights::Balanced);
        let labels = ["B-x".to_string(), "O".to_string()];
        let card = model_card(&a, &CardInputs { history: &h, best_epoch: Some(2), best_step: Some(20), steps_per_epoch: 10, labels: &labels, class_weights: Some(&[3.0, 0.6]) });
        assert!(card.contains("- class_weights: balanced (B-x 3.0000, O 0.6000)\n"), "{card}");
        assert!(card.contains("results on the test set (`test.conll`)"), "{card}");
        assert!(card.contains("- Entity F1: 0.3750\n") && card.contains("- Accuracy: 0.9000\n") && card.contains("- Loss: 0.1250\n"), "{card}");
        assert_eq!(card.matches("- Loss:").count(), 1, "{card}");
        assert!(card.contains("split: test") && card.contains("    - type: accuracy\n      value: 0.9\n"), "{card}");
        assert!(card.contains("- label_all_tokens: true\n") && card.contains("- aggregation_strategy: max\n"), "{card}");
        // Not evaluated yet: no results, an empty model-index entry.
        let card = model_card(&args(), &CardInputs { history: &[], best_epoch: None, best_step: None, steps_per_epoch: 10, labels: &[], class_weights: None });
        assert!(card.contains("It has not been evaluated yet.") && card.contains("  results: []\n---"), "{card}");
    }
}

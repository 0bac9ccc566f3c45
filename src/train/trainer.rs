//! `finetune`, `eval` and `predict` on HF model directories.
//!
//! Training follows transformers' `Trainer` defaults: AdamW (β = 0.9/0.999, eps 1e-8, weight
//! decay except biases and LayerNorm weights), linear warmup then linear decay (or another of
//! transformers' `lr_scheduler_type`s), global grad-norm
//! clipping, gradient accumulation (gradients of k micro-batches averaged: exactly the big batch
//! when every micro-batch has the same number of labelled positions), seeded shuffling per epoch,
//! evaluation on dev after every epoch, early stopping on a chosen metric, the best model kept.
//!
//! Determinism: the data order of epoch e is a function of (seed, e); dropout of micro-batch i is
//! seeded by (seed, i). With the weights, the AdamW moments and the counters saved in
//! `OUT/checkpoint/`, `--resume` continues bit for bit (CPU).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::data::{integer_labels, load_sequences, load_token_classification, name_labels, Example, Target, TargetKind};
use super::windows;
use super::words::{self, Aggregation, TagOptions};
use super::metrics::{classification_report, entity_report, multilabel_report, regression_report, EntityReport, Report};
use crate::data::{Batch, BertTokenizer};
use crate::error::{file_err, Error, Result};
use crate::memory::{self, MemoryConfig};
use crate::models::bert::weights::{read_safetensors, write_safetensors};
use crate::models::bert::{Bert, Head, Precision};
use crate::ops;
use crate::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig, Schedule, ScheduleKind, Sgd, SgdConfig};
use crate::util::Rng;
use crate::util::write_atomic;
use crate::autograd::Profile;
use crate::{Device, Grads, Tape, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Sequence classification (`text`, `label`; optional `text_pair`).
    Classify,
    /// Token classification with BIO tags (NER, token-level intent tags).
    Ner,
    /// Text-pair classification (dialogue history as `text`, candidate response as `text_pair`).
    Pair,
    /// Multi-label sequence classification: any number of labels per text (sigmoid per label,
    /// binary cross-entropy; transformers' `problem_type: multi_label_classification`).
    Multilabel,
    /// Sequence regression: one real-valued score per text or pair (mean squared error;
    /// transformers' `problem_type: regression`, `num_labels: 1`).
    Regression,
}

impl Task {
    /// transformers' `problem_type` for a sequence task (None for token classification).
    pub fn problem_type(self) -> Option<&'static str> {
        match self {
            Task::Classify | Task::Pair => Some("single_label_classification"),
            Task::Multilabel => Some("multi_label_classification"),
            Task::Regression => Some("regression"),
            Task::Ner => None,
        }
    }

    /// The dev metrics the task's evaluation reports (any may be `--metric`).
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Task::Ner => &["entity_f1", "entity_precision", "entity_recall", "accuracy", "macro_f1", "loss"],
            Task::Multilabel => &["micro_f1", "micro_precision", "micro_recall", "macro_f1", "accuracy", "loss"],
            Task::Regression => &["pearson", "spearman", "mse", "mae", "loss"],
            Task::Classify | Task::Pair => &["accuracy", "macro_f1", "loss"],
        }
    }

    /// The metric early stopping and the best checkpoint follow unless `--metric` says otherwise.
    pub fn default_metric(self) -> &'static str {
        match self {
            Task::Ner => "entity_f1",
            Task::Multilabel => "micro_f1",
            Task::Regression => "pearson",
            Task::Classify | Task::Pair => "accuracy",
        }
    }
}

/// Metrics where lower is better (the rest: higher is better).
fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "loss" | "mse" | "mae")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

impl OptimizerKind {
    /// The name as papers and PyTorch write it.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adamw => "AdamW",
            OptimizerKind::Sgd => "SGD",
        }
    }
}

/// `--class-weights`: how much each class's examples (tags, for token classification) weigh in
/// the cross-entropy loss; for multi-label data, the weight of each label's positive term in the
/// binary cross-entropy (`pos_weight`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// scikit-learn's `compute_class_weight("balanced")`: n / (k · count(c)) over the training
    /// labels (the words' tags for ner), k the number of labels the training data has; a label
    /// with no training example weighs 1. Multi-label: `pos_weight` = negatives / positives of
    /// each label in the training data (PyTorch's recipe), 1 for a label with no positive.
    Balanced,
    /// A weight per label by name; labels not named weigh 1.
    Given(Vec<(String, f64)>),
}

impl std::str::FromStr for ClassWeights {
    type Err = String;

    /// `balanced`, or `LABEL=W,LABEL=W,...`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "balanced" {
            return Ok(ClassWeights::Balanced);
        }
        let mut given = Vec::new();
        for part in s.split(',') {
            let (label, w) = part.rsplit_once('=').ok_or_else(|| format!("\"{part}\" is not LABEL=WEIGHT (give `balanced` or LABEL=W,LABEL=W,...)"))?;
            let w: f64 = w.trim().parse().map_err(|_| format!("weight \"{w}\" of label \"{label}\" is not a number"))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("weight {w} of label \"{label}\" must be finite and non-negative"));
            }
            if given.iter().any(|(l, _): &(String, f64)| l == label) {
                return Err(format!("label \"{label}\" is given twice"));
            }
            given.push((label.to_string(), w));
        }
        Ok(ClassWeights::Given(given))
    }
}

impl ClassWeights {
    /// The weight of each label of `labels` (the model's order), from the training examples.
    fn resolve(&self, task: Task, labels: &[String], train: &[Example], path: &Path) -> Result<Vec<f64>> {
        match self {
            ClassWeights::Balanced if task == Task::Multilabel => {
                let n = train.len();
                Ok(labels
                    .iter()
                    .map(|l| {
                        let pos = train.iter().filter(|e| e.labels().contains(&l.as_str())).count();
                        if pos == 0 { 1.0 } else { (n - pos) as f64 / pos as f64 }
                    })
                    .collect())
            }
            ClassWeights::Balanced => {
                let mut count = vec![0usize; labels.len()];
                for l in train.iter().flat_map(|e| e.labels()) {
                    if let Some(i) = labels.iter().position(|x| x == l) {
                        count[i] += 1;
                    }
                }
                let n: usize = count.iter().sum();
                let k = count.iter().filter(|&&c| c > 0).count();
                Ok(count.iter().map(|&c| if c == 0 { 1.0 } else { n as f64 / (k as f64 * c as f64) }).collect())
            }
            ClassWeights::Given(given) => {
                if let Some((l, _)) = given.iter().find(|(l, _)| !labels.contains(l)) {
                    return file_err(path, format!("--class-weights names label \"{l}\", which the model does not have (labels: {})", labels.join(", ")));
                }
                Ok(labels.iter().map(|l| given.iter().find(|(g, _)| g == l).map_or(1.0, |(_, w)| *w)).collect())
            }
        }
    }
}

/// The loss settings: label smoothing and class weights (label order) of the cross-entropy
/// tasks; multi-label's positive weights in `weights`.
#[derive(Debug, Clone, Copy, Default)]
struct LossSpec<'a> {
    smoothing: f64,
    weights: Option<&'a [f64]>,
}

impl<'a> LossSpec<'a> {
    fn of(args: &FinetuneArgs, state: &'a TrainerState) -> Self {
        LossSpec { smoothing: args.label_smoothing, weights: state.class_weights.as_deref() }
    }
}

/// Everything `engram finetune` takes; defaults are transformers' `Trainer` defaults where it has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneArgs {
    pub model: PathBuf,
    pub task: Task,
    pub train: PathBuf,
    pub dev: PathBuf,
    pub test: Option<PathBuf>,
    pub out: PathBuf,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_length: usize,
    pub warmup_ratio: f64,
    /// Warmup in optimizer steps; when set it wins over `warmup_ratio` (transformers'
    /// `warmup_steps`).
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// The learning-rate schedule after warmup (transformers' `lr_scheduler_type`).
    #[serde(default)]
    pub lr_scheduler: ScheduleKind,
    /// AdamW's β₁, β₂ and ε (transformers' `adam_beta1`, `adam_beta2`, `adam_epsilon`).
    #[serde(default = "default_adam")]
    pub adam: (f64, f64, f64),
    pub weight_decay: f64,
    /// Train for this many optimizer steps, whatever `epochs` says (transformers' `max_steps`):
    /// ⌈max_steps / steps per epoch⌉ epochs, the last one cut short; the schedule spans them.
    #[serde(default)]
    pub max_steps: Option<u64>,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub freeze_backbone: bool,
    /// Stop after this many epochs without improvement of `metric` on dev.
    pub patience: Option<usize>,
    /// Early stopping counts an evaluation as an improvement only when it beats the best by more
    /// than this (transformers' `early_stopping_threshold`); the best model is kept on any gain.
    #[serde(default)]
    pub early_stopping_threshold: f64,
    /// accuracy | macro_f1 | entity_f1 | micro_f1 | pearson | spearman | mse | loss (default:
    /// [`Task::default_metric`]).
    pub metric: String,
    pub device: Device,
    pub max_train_examples: Option<usize>,
    pub max_eval_examples: Option<usize>,
    pub resume: bool,
    /// Also write the resumable checkpoint every N optimizer steps (always at each epoch's end).
    pub save_steps: Option<u64>,
    /// Stop (as if interrupted) after this many optimizer steps, with a checkpoint: for testing resume.
    pub stop_after_steps: Option<u64>,
    /// Evaluate on dev every N optimizer steps (and after the last one) instead of after every
    /// epoch — transformers' `eval_strategy="steps"`; `patience` then counts evaluations.
    #[serde(default)]
    pub eval_steps: Option<u64>,
    /// Batch examples of similar length together (transformers' `group_by_length`): less padding.
    #[serde(default)]
    pub group_by_length: bool,
    /// Label smoothing ε of the cross-entropy tasks (transformers' `label_smoothing_factor`).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Per-class weights of the cross-entropy tasks' loss (`F.cross_entropy(weight=...)`), or
    /// multi-label's positive weights (`pos_weight`), for imbalanced labels; the dev and test
    /// loss use them too.
    #[serde(default)]
    pub class_weights: Option<ClassWeights>,
    /// The names of integer labels (class ids, as an HF datasets export writes a `ClassLabel`
    /// column such as `ner_tags`), in id order; they also become the model's labels, in that order.
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    pub progress: bool,
    /// Long inputs cut into segments: recurrent memory tokens, or the chunk-and-average
    /// baseline (see `memory`). `None`: truncate to `max_length` like transformers.
    #[serde(default)]
    pub memory: Option<MemoryConfig>,
    /// Examples per forward pass when evaluating dev and test (transformers'
    /// `per_device_eval_batch_size`); it changes only float rounding, never which examples count.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Multi-label data: the separator of the labels in one CSV/TSV field or JSON string.
    #[serde(default = "default_label_sep")]
    pub label_sep: char,
    /// Truncate over-long inputs from the left (keep their end), transformers' `truncation_side="left"`.
    #[serde(default)]
    pub truncate_left: bool,
    /// Token classification: inputs longer than the window are read in overlapping windows
    /// sharing at most this many tokens, each word labelled in one (see `windows`), in training
    /// and evaluation; `None` truncates them.
    #[serde(default)]
    pub stride: Option<usize>,
    /// Token classification: train every sub-token of a word on its tag (a `B-` tag continued
    /// as `I-`), not only the first (transformers' run_ner `--label_all_tokens`; see `words`).
    #[serde(default)]
    pub label_all_tokens: bool,
    /// Token classification: how dev and test evaluation read a word's tag from its sub-tokens.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// bf16 autocast on the CPU (transformers' `--bf16`, `torch.autocast("cpu", torch.bfloat16)`):
    /// every linear layer's GEMMs, forward and backward, take bf16 operands and sum in f32;
    /// parameters, optimizer state and everything else stay f32. Evaluation runs the same way.
    #[serde(default)]
    pub bf16: bool,
    /// Gradient (activation) checkpointing (transformers' `gradient_checkpointing`): each
    /// encoder layer keeps only its input during the forward and runs again in backward — less
    /// memory for about one more forward per step, the same weights bit for bit (to rounding
    /// where weights are reused across checkpointed layers: ALBERT, memory segments).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Time every op of the training steps (forward and backward, see `autograd::Profile`), plus
    /// batching, the optimizer and evaluation, and write the table to OUT/profile.txt.
    #[serde(default)]
    pub profile: bool,
}

fn default_adam() -> (f64, f64, f64) {
    let c = AdamWConfig::default();
    (c.beta1, c.beta2, c.eps)
}

/// Examples per forward pass in evaluation (dev, test, `engram eval`) unless told otherwise.
pub const DEFAULT_EVAL_BATCH: usize = 64;

fn default_eval_batch() -> usize {
    DEFAULT_EVAL_BATCH
}

fn default_label_sep() -> char {
    ','
}

impl FinetuneArgs {
    fn tagging(&self) -> TagOptions {
        TagOptions { stride: self.stride, aggregation: self.aggregation }
    }

    pub fn new(model: PathBuf, task: Task, train: PathBuf, dev: PathBuf, out: PathBuf) -> Self {
        FinetuneArgs {
            model,
            task,
            train,
            dev,
            test: None,
            out,
            lr: 2e-5,
            epochs: 3,
            batch_size: 32,
            grad_accum: 1,
            max_length: 128,
            warmup_ratio: 0.0,
            warmup_steps: None,
            lr_scheduler: ScheduleKind::Linear,
            adam: default_adam(),
            weight_decay: 0.01,
            max_steps: None,
            max_grad_norm: 1.0,
            seed: 42,
            optimizer: OptimizerKind::Adamw,
            momentum: 0.9,
            freeze_backbone: false,
            patience: None,
            early_stopping_threshold: 0.0,
            metric: task.default_metric().into(),
            device: Device::Cpu,
            max_train_examples: None,
            max_eval_examples: None,
            resume: false,
            save_steps: None,
            stop_after_steps: None,
            eval_steps: None,
            group_by_length: false,
            label_smoothing: 0.0,
            class_weights: None,
            label_names: None,
            progress: true,
            memory: None,
            label_sep: default_label_sep(),
            eval_batch_size: DEFAULT_EVAL_BATCH,
            truncate_left: false,
            stride: None,
            label_all_tokens: false,
            aggregation: Aggregation::First,
            gradient_checkpointing: false,
            bf16: false,
            profile: false,
        }
    }
}

/// `trainer_state.json` exactly as transformers' `TrainerState` has it (every field and no
/// other, so `TrainerState.load_from_json` reads it): step, fractional epoch, the run's length
/// and batch, `log_history`, the best evaluation, and early stopping's counter as its callback
/// state. Our own counters for `--resume` are in `engram_state.json` beside it.
fn hf_trainer_state(state: &TrainerState, args: &FinetuneArgs) -> serde_json::Value {
    let spe = state.steps_per_epoch.max(1);
    let max_steps = args.max_steps.unwrap_or(spe * args.epochs as u64);
    let num_train_epochs = args.max_steps.map_or(args.epochs as u64, |m| m.div_ceil(spe));
    let best = state.best_step.map(|_| args.out.display().to_string());
    let mut callbacks = serde_json::Map::new();
    if let Some(p) = args.patience {
        callbacks.insert(
            "EarlyStoppingCallback".into(),
            serde_json::json!({
                "args": { "early_stopping_patience": p, "early_stopping_threshold": args.early_stopping_threshold },
                "attributes": { "early_stopping_patience_counter": state.epochs_without_improvement },
            }),
        );
    }
    serde_json::json!({
        "best_global_step": state.best_step,
        "best_metric": state.best_metric,
        "best_model_checkpoint": best,
        "epoch": ((state.global_step as f64 / spe as f64) * 1e4).round() / 1e4,
        "eval_steps": args.eval_steps.unwrap_or(spe),
        "global_step": state.global_step,
        "is_hyper_param_search": false,
        "is_local_process_zero": true,
        "is_world_process_zero": true,
        "log_history": log_history(state),
        "logging_steps": 1,
        "max_steps": max_steps,
        "num_input_tokens_seen": state.input_tokens_seen,
        "num_train_epochs": num_train_epochs,
        "save_steps": args.save_steps.unwrap_or(spe),
        "stateful_callbacks": callbacks,
        "total_flos": 0.0,
        "train_batch_size": args.batch_size,
        "trial_name": null,
        "trial_params": null,
    })
}

/// transformers' `log_history` (the list its `trainer_state.json` carries, which plotting and
/// tracking tools read): one entry per optimizer step (`loss`, `grad_norm`, `learning_rate`) and
/// one per dev evaluation (`eval_loss`, `eval_<metric>`, ...), each with its fractional `epoch`
/// and `step`, in step order (a step's training entry before its evaluation). Written, never read
/// back.
fn log_history(state: &TrainerState) -> Vec<serde_json::Value> {
    let epoch = |step: u64| if state.steps_per_epoch > 0 { ((step as f64 / state.steps_per_epoch as f64) * 1e4).round() / 1e4 } else { 0.0 };
    let norms: HashMap<u64, f64> = state.grad_norm_log.iter().copied().collect();
    let mut out: Vec<(u64, u8, serde_json::Value)> = Vec::new();
    for (&(step, loss), &(_, lr)) in state.loss_log.iter().zip(&state.lr_log) {
        let mut e = serde_json::json!({ "loss": loss, "learning_rate": lr, "epoch": epoch(step), "step": step });
        if let Some(g) = norms.get(&step) {
            e["grad_norm"] = serde_json::json!(g);
        }
        out.push((step, 0, e));
    }
    for h in super::card::evaluations(&state.history) {
        let step = h["step"].as_u64().unwrap_or(0);
        let mut e = serde_json::Map::new();
        for (k, v) in h["values"].as_object().into_iter().flatten() {
            e.insert(format!("eval_{k}"), v.clone());
        }
        e.insert("epoch".into(), serde_json::json!(epoch(step)));
        e.insert("step".into(), serde_json::json!(step));
        out.push((step, 1, serde_json::Value::Object(e)));
    }
    out.sort_by_key(|(step, kind, _)| (*step, *kind));
    out.into_iter().map(|(_, _, e)| e).collect()
}

/// Counters saved beside the checkpoint (`engram_state.json`; checkpoints written before it
/// existed kept them in `trainer_state.json`, which resume still reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TrainerState {
    epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    micro_in_epoch: usize,
    global_step: u64,
    global_micro: u64,
    best_metric: Option<f64>,
    best_epoch: Option<usize>,
    /// The optimizer step of the best evaluation.
    #[serde(default)]
    best_step: Option<u64>,
    /// Evaluations since the best one (epochs, or every `eval_steps`), for early stopping.
    epochs_without_improvement: usize,
    /// The optimizer step of the last evaluation.
    #[serde(default)]
    last_eval_step: Option<u64>,
    loss_log: Vec<(u64, f64)>,
    /// The learning rate of each optimizer step (transformers logs `learning_rate`).
    #[serde(default)]
    lr_log: Vec<(u64, f64)>,
    /// The global gradient norm before clipping, per optimizer step (transformers logs
    /// `grad_norm`); empty with `--max-grad-norm 0`, which computes none.
    #[serde(default)]
    grad_norm_log: Vec<(u64, f64)>,
    /// Optimizer steps per epoch (for `log_history`'s fractional epochs).
    #[serde(default)]
    steps_per_epoch: u64,
    history: Vec<serde_json::Value>,
    labels: Vec<String>,
    args_seed: u64,
    /// What the run trains on: example count and a hash of their text and labels, so `--resume`
    /// with other data is an error rather than a silently different run.
    #[serde(default)]
    train_examples: Option<usize>,
    #[serde(default)]
    train_fingerprint: Option<String>,
    /// The loss's class weights in label order (`--class-weights`, resolved on the training data
    /// when the run starts; a resumed run keeps them).
    #[serde(default)]
    class_weights: Option<Vec<f64>>,
    /// Input tokens of every training micro-batch so far, resumes included (transformers'
    /// `num_input_tokens_seen`).
    #[serde(default)]
    input_tokens_seen: u64,
}

/// FNV-1a over every example's fields (with separators): a fingerprint of the training data.
fn fingerprint(ex: &[Example]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    for e in ex {
        match e {
            Example::Seq { text, text_pair, target } => {
                eat(text);
                eat(text_pair.as_deref().unwrap_or("\u{0}none"));
                match target {
                    Target::Class(l) => eat(l),
                    Target::Labels(ls) => {
                        eat("\u{0}labels");
                        ls.iter().for_each(|l| eat(l));
                    }
                    Target::Score(x) => eat(&format!("\u{0}score {x:e}")),
                }
            }
            Example::Tokens { words, tags, .. } => {
                words.iter().for_each(|w| eat(w));
                tags.iter().for_each(|t| eat(t));
            }
        }
        eat("\u{0}end");
    }
    format!("{h:016x}")
}

/// `--resume` continues the same run: the data and the flags that fix the batches, the data
/// order and the model must be the checkpoint's. (The learning rate, epochs, patience and the
/// like may change: a resumed run with new ones is still well defined, just not identical.)
fn check_resume(args: &FinetuneArgs, state: &TrainerState, saved: &serde_json::Value, train: &[Example], ckpt: &Path) -> Result<()> {
    if let (Some(n), Some(f)) = (state.train_examples, &state.train_fingerprint) {
        let (m, g) = (train.len(), fingerprint(train));
        if n != m || *f != g {
            return file_err(
                &args.train,
                format!(
                    "is not the data the checkpoint in {} was trained on ({n} examples, fingerprint {f}; this is {m} examples, {g}); \
                     --resume continues the same run: give the same --train and --max-train-examples, or drop --resume",
                    ckpt.display()
                ),
            );
        }
    }
    let mine = serde_json::to_value(args).expect("args serialise");
    for (key, flag) in [
        ("task", "--task"),
        ("batch_size", "--batch-size"),
        ("grad_accum", "--grad-accum"),
        ("seed", "--seed"),
        ("max_length", "--max-length"),
        ("truncate_left", "--truncate-left"),
        ("stride", "--stride"),
        ("label_all_tokens", "--label-all-tokens"),
        ("label_sep", "--label-sep"),
        ("group_by_length", "--group-by-length"),
        ("freeze_backbone", "--freeze-backbone"),
        ("bf16", "--bf16"),
        ("label_smoothing", "--label-smoothing"),
        ("class_weights", "--class-weights"),
        ("memory", "--memory-tokens/--segment-len/--bptt"),
    ] {
        if let Some(was) = saved.get(key) {
            let now = mine.get(key).cloned().unwrap_or(serde_json::Value::Null);
            // No memory flags on resume: the checkpoint's memory config is used.
            if *was != now && !(key == "memory" && now.is_null()) {
                return file_err(
                    ckpt.join("training_args.json"),
                    format!("the checkpoint was trained with {flag} = {was}; resume with the same value (asked: {now}), or drop --resume"),
                );
            }
        }
    }
    Ok(())
}

/// The outcome of `finetune`: the best dev metric and where the model went.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub best_metric: f64,
    pub best_epoch: usize,
    /// The optimizer step the best model was evaluated at.
    pub best_step: u64,
    pub metric: String,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub test: Option<serde_json::Value>,
    pub out: PathBuf,
    pub train_examples_per_s: f64,
    pub train_tokens_per_s: f64,
    /// Stopped by `stop_after_steps` with a checkpoint to resume from (no final evaluation).
    pub interrupted: bool,
    pub global_step: u64,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fisher–Yates with our RNG: the order of epoch `epoch`.
fn order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(mix(seed, epoch as u64 + 1));
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// transformers' `group_by_length` (its `get_length_grouped_indices`): the epoch's shuffled order
/// cut into megabatches of `min(n / (4·batch), 50)` batches, each sorted longest first, and the
/// longest example of all moved to the very front (an out-of-memory shows at once). Batches then
/// hold examples of similar length and pad little; the order is still a function of (seed, epoch).
fn group_by_length(ord: Vec<usize>, lens: &[usize], batch: usize) -> Vec<usize> {
    let mult = (ord.len() / (batch * 4)).clamp(1, 50);
    let mut megas: Vec<Vec<usize>> = ord.chunks(mult * batch).map(|m| {
        let mut m = m.to_vec();
        m.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        m
    }).collect();
    let longest = (0..megas.len()).max_by_key(|&k| (lens[megas[k][0]], std::cmp::Reverse(k)));
    if let Some(k) = longest {
        let (a, b) = (megas[0][0], megas[k][0]);
        megas[0][0] = b;
        megas[k][0] = a;
    }
    megas.concat()
}

fn load_examples(task: Task, path: &Path, limit: Option<usize>, label_sep: char) -> Result<Vec<Example>> {
    let mut ex = match task {
        Task::Ner => load_token_classification(path)?,
        Task::Classify | Task::Pair => load_sequences(path, TargetKind::Class)?,
        Task::Multilabel => load_sequences(path, TargetKind::Labels { sep: label_sep })?,
        Task::Regression => load_sequences(path, TargetKind::Score)?,
    };
    if task == Task::Pair && ex.iter().any(|e| matches!(e, Example::Seq { text_pair: None, .. })) {
        return file_err(path, "the pair task needs a text_pair column (history in text, candidate in text_pair)");
    }
    if let Some(n) = limit {
        ex.truncate(n);
    }
    Ok(ex)
}

/// Integer labels named: by `names` (`--label-names`) when given; a token-classification file
/// of class ids without names is an error (its tags would train as meaningless names).
fn name_ids(task: Task, ex: &mut [Example], names: Option<&[String]>, path: &Path) -> Result<()> {
    match names {
        Some(n) if integer_labels(ex) => name_labels(ex, n, path),
        None if task == Task::Ner && integer_labels(ex) => file_err(
            path,
            "has class ids for tags (an HF datasets export?): give their names in id order with --label-names O,B-PER,I-PER,... \
             (the dataset's features[\"ner_tags\"].feature.names)",
        ),
        _ => Ok(()),
    }
}

/// A tokenized batch: padded and truncated to the window, or cut into memory segments.
enum Inputs {
    Plain(Batch),
    Long(memory::Segments),
}

impl Inputs {
    fn tokens(&self) -> usize {
        match self {
            Inputs::Plain(b) => b.tokens(),
            Inputs::Long(s) => s.tokens,
        }
    }

    fn batch(&self) -> &Batch {
        match self {
            Inputs::Plain(b) => b,
            Inputs::Long(_) => unreachable!("token classification never runs on segments"),
        }
    }
}

/// The head's logits for `inputs` (the memory model's when `mem` is set).
fn logits(bert: &Bert, mem: Option<&MemoryConfig>, tape: &Tape, inputs: &Inputs, train: bool) -> Result<Tensor> {
    match (inputs, mem) {
        (Inputs::Plain(b), _) => bert.logits(tape, b, train),
        (Inputs::Long(s), Some(cfg)) => Ok(memory::forward(bert, cfg, tape, s, train, false)?.logits),
        (Inputs::Long(_), None) => Err(Error::Value { op: "finetune", detail: "segmented inputs need a memory config".into() }),
    }
}

/// How `encode` labels token classification: training data (every tag must be one of the
/// model's; `all_tokens`: `--label-all-tokens`) or evaluation data (a BIO tag the model does not
/// know, an entity type absent from training, is left out of the loss; it still counts as a gold
/// entity the model missed). Evaluation labels first sub-tokens only, so the dev loss is per word
/// with or without `--label-all-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Labelling {
    Train { all_tokens: bool },
    Eval,
}

/// Tokenize examples; labels are class ids `(B)` or aligned token labels `(B, T)` with -100 on
/// special tokens, padding and every sub-token but a word's first (or, with
/// `Labelling::Train { all_tokens: true }`, on special tokens and padding only; see `words`).
fn encode(tok: &BertTokenizer, task: Task, mem: Option<&MemoryConfig>, ex: &[&Example], label_ids: &HashMap<String, usize>, path: &Path, how: Labelling) -> Result<(Inputs, Tensor)> {
    if let Some(cfg) = mem {
        let mut units = Vec::with_capacity(ex.len());
        for e in ex {
            let Example::Seq { text, text_pair, .. } = e else {
                return file_err(path, "memory segments need sequence or pair examples (not token classification)");
            };
            units.push(memory::units(tok, text, text_pair.as_deref())?);
        }
        let seg = memory::segment(tok, cfg, &units, &path.display().to_string())?;
        return Ok((Inputs::Long(seg), seq_targets(task, ex, label_ids, path)?));
    }
    let (b, y) = encode_plain(tok, task, ex, label_ids, path, how)?;
    Ok((Inputs::Plain(b), y))
}

fn encode_plain(tok: &BertTokenizer, task: Task, ex: &[&Example], label_ids: &HashMap<String, usize>, path: &Path, how: Labelling) -> Result<(Batch, Tensor)> {
    let lab = |l: &str| -> Result<i64> {
        match label_ids.get(l) {
            Some(&i) => Ok(i as i64),
            None if how == Labelling::Eval && task == Task::Ner => Ok(crate::ops::IGNORE_INDEX),
            None => Err(Error::File { path: path.display().to_string(), detail: format!("label \"{l}\" is not among the model's labels") }),
        }
    };
    match task {
        Task::Ner => {
            let words: Vec<Vec<String>> = ex.iter().map(|e| match e { Example::Tokens { words, .. } => words.clone(), _ => Vec::new() }).collect();
            let batch = tok.encode_words(&words)?;
            let t = batch.seq_len();
            let mut labels = vec![crate::ops::IGNORE_INDEX; ex.len() * t];
            let inside = (how == Labelling::Train { all_tokens: true }).then(|| words::inside_labels(label_ids));
            for (b, e) in ex.iter().enumerate() {
                let Example::Tokens { tags, scored, .. } = e else { unreachable!() };
                let mut prev = None;
                for (i, w) in batch.word_ids[b].iter().enumerate() {
                    if let Some(w) = *w {
                        if scored.contains(&(w as usize)) {
                            if prev != Some(w) {
                                labels[b * t + i] = lab(&tags[w as usize])?;
                            } else if let Some(inside) = &inside {
                                // A later sub-token: the word's tag, B- continued as I-.
                                labels[b * t + i] = inside[&(lab(&tags[w as usize])? as usize)] as i64;
                            }
                        }
                    }
                    prev = *w;
                }
            }
            let l = Tensor::from_ids(labels, &[ex.len(), t])?;
            Ok((batch, l))
        }
        Task::Classify | Task::Pair | Task::Multilabel | Task::Regression => {
            let mut singles = Vec::new();
            let mut pairs = Vec::new();
            for e in ex {
                let Example::Seq { text, text_pair, .. } = e else { unreachable!() };
                match text_pair {
                    Some(p) => pairs.push((text.as_str(), p.as_str())),
                    None => singles.push(text.as_str()),
                }
            }
            let batch = if !pairs.is_empty() && singles.is_empty() {
                tok.encode_pairs(&pairs)?
            } else if pairs.is_empty() {
                tok.encode(&singles)?
            } else {
                return file_err(path, "mixes rows with and without text_pair");
            };
            Ok((batch, seq_targets(task, ex, label_ids, path)?))
        }
    }
}

/// The loss targets of sequence examples: class ids `(B)` (classify, pair), multi-hot `(B, L)`
/// f32 (multilabel), scores `(B, 1)` f32 (regression).
fn seq_targets(task: Task, ex: &[&Example], label_ids: &HashMap<String, usize>, path: &Path) -> Result<Tensor> {
    let id = |l: &str| -> Result<usize> {
        label_ids.get(l).copied().ok_or_else(|| Error::File { path: path.display().to_string(), detail: format!("label \"{l}\" is not among the model's labels") })
    };
    let n = ex.len();
    let mismatch = || file_err(path, format!("holds examples of another kind than the {task:?} task reads"));
    match task {
        Task::Multilabel => {
            let l = label_ids.len();
            let mut hot = vec![0f32; n * l];
            for (b, e) in ex.iter().enumerate() {
                let Example::Seq { target: Target::Labels(ls), .. } = e else { return mismatch() };
                for x in ls {
                    hot[b * l + id(x)?] = 1.0;
                }
            }
            Tensor::from_vec(hot, &[n, l])
        }
        Task::Regression => {
            let mut y = Vec::with_capacity(n);
            for e in ex {
                let Example::Seq { target: Target::Score(x), .. } = e else { return mismatch() };
                y.push(*x as f32);
            }
            Tensor::from_vec(y, &[n, 1])
        }
        _ => {
            let mut y = Vec::with_capacity(n);
            for e in ex {
                let Example::Seq { target: Target::Class(l), .. } = e else { return mismatch() };
                y.push(id(l)? as i64);
            }
            Tensor::from_ids(y, &[n])
        }
    }
}

/// The op name of the task's loss (one call per micro-batch, as the profile counts them).
fn loss_op(task: Task) -> &'static str {
    match task {
        Task::Multilabel => "binary_cross_entropy_with_logits",
        Task::Regression => "mse_loss",
        Task::Classify | Task::Pair | Task::Ner => "cross_entropy",
    }
}

/// The task's training loss: cross-entropy over classes (or tags), BCE with logits per label,
/// or mean squared error of the score — transformers' choice for each `problem_type`.
/// `loss` (label smoothing, class weights) applies to the cross-entropy tasks (transformers'
/// `label_smoothing_factor`; `F.cross_entropy(weight=...)`); multi-label's weights are BCE's
/// `pos_weight`.
fn task_loss(task: Task, tape: &Tape, logits: &Tensor, y: &Tensor, loss: LossSpec) -> Result<Tensor> {
    match (task, loss.weights) {
        (Task::Multilabel, None) => ops::binary_cross_entropy_with_logits(tape, logits, y),
        (Task::Multilabel, Some(w)) => ops::binary_cross_entropy_with_logits_weighted(tape, logits, y, w),
        (Task::Regression, _) => ops::mse_loss(tape, logits, y),
        (Task::Classify | Task::Pair | Task::Ner, None) => ops::cross_entropy_smoothed(tape, logits, y, loss.smoothing),
        (Task::Classify | Task::Pair | Task::Ner, Some(w)) => ops::cross_entropy_weighted(tape, logits, y, w, loss.smoothing),
    }
}

/// `--stride`, `--aggregation` and `--label-all-tokens` are token classification's: a sequence
/// task reads long inputs with memory segments, and has no sub-tokens to label or aggregate.
fn check_tagging(task: Task, tagging: TagOptions, label_all_tokens: bool) -> Result<()> {
    if task == Task::Ner {
        return Ok(());
    }
    if tagging.stride.is_some() {
        return Err(Error::Value {
            op: "--stride",
            detail: "overlapping windows are for token classification (ner); a sequence task reads long inputs in segments (--memory-tokens, --segment-len)".into(),
        });
    }
    let flag = if label_all_tokens {
        "--label-all-tokens"
    } else if tagging.aggregation != Aggregation::First {
        "--aggregation"
    } else {
        return Ok(());
    };
    Err(Error::Value { op: flag, detail: format!("sub-tokens are labelled and read back by token classification (ner) only; the task here is {}", serde_json::to_value(task).expect("task serialises").as_str().unwrap_or("?")) })
}

/// The windows of token-classification examples (`stride`; `None` without it): (example index,
/// first word, window), an example that fits being its own one window.
fn windowed(tok: &BertTokenizer, ex: &[Example], stride: Option<usize>) -> Result<Option<Vec<(usize, usize, Example)>>> {
    let Some(stride) = stride else { return Ok(None) };
    let budget = windows::budget(tok, stride)?;
    let mut out = Vec::with_capacity(ex.len());
    for (i, e) in ex.iter().enumerate() {
        out.extend(windows::split(tok, e, budget, stride)?.into_iter().map(|(first, w)| (i, first, w)));
    }
    Ok(Some(out))
}

/// What evaluation and prediction run: each example, or its windows; each with its example's
/// index and its first word.
fn run_items<'a>(ex: &'a [Example], win: Option<&'a [(usize, usize, Example)]>) -> Vec<(usize, usize, &'a Example)> {
    match win {
        Some(w) => w.iter().map(|(i, f, e)| (*i, *f, e)).collect(),
        None => ex.iter().enumerate().map(|(i, e)| (i, 0, e)).collect(),
    }
}

/// How many examples were cut into more than one window.
fn long_inputs(win: &[(usize, usize, Example)]) -> usize {
    win.iter().filter(|x| x.1 > 0).map(|x| x.0).collect::<std::collections::BTreeSet<_>>().len()
}

/// Indices of items ordered by their length (stable: equal lengths keep their order), so a
/// batch holds inputs of similar length and pads little.
fn by_length(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    let lens: Vec<usize> = lens.collect();
    let mut idx: Vec<usize> = (0..lens.len()).collect();
    idx.sort_by_key(|&i| lens[i]);
    idx
}

/// Bytes of an example's text(s) (UTF-8): a cheap stand-in for its token count.
fn example_chars(e: &Example) -> usize {
    match e {
        Example::Seq { text, text_pair, .. } => text.len() + text_pair.as_ref().map_or(0, |p| p.len()),
        Example::Tokens { words, .. } => words.iter().map(|w| w.len() + 1).sum(),
    }
}

fn argmax_rows(v: &[f64], width: usize) -> Vec<usize> {
    v.chunks(width).map(|r| r.iter().enumerate().fold((0, f64::NEG_INFINITY), |acc, (i, &x)| if x > acc.1 { (i, x) } else { acc }).0).collect()
}

/// Dev/test evaluation: the metrics JSON, the report text, and the value of each metric name.
pub struct Evaluation {
    pub json: serde_json::Value,
    pub text: String,
    pub values: BTreeMap<String, f64>,
    /// One JSON object per example, in the file's order: its input, the gold answer and the
    /// model's (`--test`'s `test_predictions.jsonl`, `engram eval --predictions`).
    pub predictions: Vec<serde_json::Value>,
}

/// Predictions rows as JSONL.
fn write_predictions(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// The input and gold answer of an example, for its predictions row.
fn prediction_row(e: &Example) -> serde_json::Value {
    match e {
        Example::Tokens { words, tags, .. } => serde_json::json!({ "tokens": words, "gold": tags }),
        Example::Seq { text, text_pair, target } => {
            let mut row = serde_json::json!({ "text": text });
            if let Some(p) = text_pair {
                row["text_pair"] = serde_json::json!(p);
            }
            row["gold"] = match target {
                Target::Class(l) => serde_json::json!(l),
                Target::Labels(ls) => serde_json::json!(ls),
                Target::Score(x) => serde_json::json!(x),
            };
            row
        }
    }
}

/// `loss` (label smoothing, class weights): the training loss's, so the dev loss is the same
/// quantity (as transformers' Trainer computes it); none for `engram eval`.
#[allow(clippy::too_many_arguments)]
fn evaluate(bert: &Bert, mem: Option<&MemoryConfig>, tok: &BertTokenizer, task: Task, ex: &[Example], labels: &[String], batch_size: usize, path: &Path, loss: LossSpec, tagging: TagOptions) -> Result<Evaluation> {
    let label_ids: HashMap<String, usize> = labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect();
    let (mut gold, mut pred) = (Vec::new(), Vec::new());
    let (mut gold_multi, mut pred_multi, mut gold_score, mut pred_score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let mut truncated = 0usize;
    // Token classification: every word's tag, "O" until a window (or the input itself) labels it.
    let gold_tags: Vec<Vec<String>> = ex.iter().map(|e| if let Example::Tokens { tags, .. } = e { tags.clone() } else { Vec::new() }).collect();
    let mut pred_tags: Vec<Vec<String>> = gold_tags.iter().map(|t| vec!["O".to_string(); t.len()]).collect();
    // What runs: the examples, or (`stride`, token classification) their windows.
    let win = if task == Task::Ner { windowed(tok, ex, tagging.stride)? } else { None };
    let items = run_items(ex, win.as_deref());
    // Sequence tasks run in order of length (less padding; their metrics and mean loss do not
    // depend on the order). NER keeps the file's batches: its loss is a mean per batch.
    let order: Vec<usize> = if task == Task::Ner { (0..items.len()).collect() } else { by_length(ex.iter().map(example_chars)) };
    let mut rows: Vec<serde_json::Value> = ex.iter().map(prediction_row).collect();
    for idx in order.chunks(batch_size.max(1)) {
        let chunk: Vec<&Example> = idx.iter().map(|&k| items[k].2).collect();
        let refs = &chunk;
        let (inputs, y) = encode(tok, task, mem, refs, &label_ids, path, Labelling::Eval)?;
        if let Inputs::Plain(b) = &inputs {
            truncated += b.truncated.iter().filter(|&&t| t).count();
            for (&k, _) in idx.iter().zip(&b.truncated).filter(|(_, &t)| t) {
                rows[items[k].0]["truncated"] = serde_json::json!(true);
            }
        }
        let tape = bert.inference_tape();
        let logits = logits(bert, mem, &tape, &inputs, false)?;
        let yd = y.to_device(bert.device())?;
        loss_sum += task_loss(task, &tape, &logits, &yd, loss)?.item()? * chunk.len() as f64;
        loss_n += chunk.len();
        let out = logits.to_f64_vec();
        match task {
            Task::Multilabel => {
                // A label is predicted when its sigmoid passes 0.5, i.e. its logit passes 0.
                gold_multi.extend(y.to_f64_vec().iter().map(|&v| v > 0.5));
                pred_multi.extend(out.iter().map(|&v| v > 0.0));
                for (&k, row) in idx.iter().zip(out.chunks(labels.len())) {
                    let on: Vec<&String> = labels.iter().zip(row).filter(|(_, &v)| v > 0.0).map(|(l, _)| l).collect();
                    rows[k]["predicted"] = serde_json::json!(on);
                }
                continue;
            }
            Task::Regression => {
                gold_score.extend(y.to_f64_vec());
                for (&k, &v) in idx.iter().zip(&out) {
                    rows[k]["predicted"] = serde_json::json!(v);
                }
                pred_score.extend(out);
                continue;
            }
            _ => {}
        }
        match task {
            Task::Ner => {
                for (b, &k) in idx.iter().enumerate() {
                    let (src, first, e) = items[k];
                    let Example::Tokens { words, scored, .. } = e else { unreachable!() };
                    // Words cut off by truncation stay "O".
                    let tags = words::word_tags(inputs.batch(), &out, b, words.len(), labels.len(), tagging.aggregation);
                    for i in scored.clone() {
                        if let Some((tag, _)) = tags[i] {
                            pred_tags[src][first + i].clone_from(&labels[tag]);
                        }
                    }
                }
            }
            _ => {
                gold.extend(y.ids("eval")?.iter().map(|&v| v as usize));
                let best = argmax_rows(&out, labels.len());
                for ((&k, &c), row) in idx.iter().zip(&best).zip(out.chunks(labels.len())) {
                    let z: f64 = row.iter().map(|&x| (x - row[c]).exp()).sum();
                    rows[k]["predicted"] = serde_json::json!(labels[c]);
                    rows[k]["score"] = serde_json::json!(round6(1.0 / z));
                }
                pred.extend(best);
            }
        }
    }
    let loss = loss_sum / loss_n.max(1) as f64;
    let mut values = BTreeMap::new();
    values.insert("loss".to_string(), loss);
    // Inputs longer than the window were cut (as transformers' truncation=True does): say how many.
    let mut cut = if truncated > 0 {
        format!("{truncated} of {} inputs were longer than {} tokens and were truncated\n", ex.len(), tok.max_len())
    } else {
        String::new()
    };
    let windowed_inputs = win.as_deref().map_or(0, long_inputs);
    if windowed_inputs > 0 {
        cut.push_str(&format!(
            "{windowed_inputs} of {} inputs were longer than {} tokens and were read in {} overlapping windows (--stride {})\n",
            ex.len(),
            tok.max_len(),
            win.as_ref().map_or(0, |w| w.len()) - (ex.len() - windowed_inputs),
            tagging.stride.unwrap_or(0)
        ));
    }
    if task == Task::Ner {
        for (row, tags) in rows.iter_mut().zip(&pred_tags) {
            row["predicted"] = serde_json::json!(tags);
        }
    }
    let mut ev = if task == Task::Ner {
        let r: EntityReport = entity_report(&gold_tags, &pred_tags);
        // Tag-level report over words, for macro F1 across tags.
        let flat_g: Vec<usize> = gold_tags.iter().flatten().map(|t| label_ids.get(t).copied().unwrap_or(0)).collect();
        let flat_p: Vec<usize> = pred_tags.iter().flatten().map(|t| label_ids.get(t).copied().unwrap_or(0)).collect();
        let tr: Report = classification_report(&flat_g, &flat_p, labels);
        values.insert("entity_f1".into(), r.overall.f1);
        values.insert("entity_precision".into(), r.overall.precision);
        values.insert("entity_recall".into(), r.overall.recall);
        values.insert("accuracy".into(), r.accuracy);
        values.insert("macro_f1".into(), tr.macro_f1);
        Evaluation {
            json: serde_json::json!({ "loss": loss, "entities": r, "tags": tr, "aggregation": tagging.aggregation }),
            text: match tagging.aggregation {
                Aggregation::First => format!("{}loss {loss:.4}\n", r.table()),
                a => format!("{}loss {loss:.4}\nwords tagged from all their sub-tokens (--aggregation {})\n", r.table(), a.name()),
            },
            values,
            predictions: Vec::new(),
        }
    } else if task == Task::Multilabel {
        let r = multilabel_report(&gold_multi, &pred_multi, labels);
        values.insert("accuracy".into(), r.subset_accuracy);
        values.insert("micro_f1".into(), r.micro.f1);
        values.insert("micro_precision".into(), r.micro.precision);
        values.insert("micro_recall".into(), r.micro.recall);
        values.insert("macro_f1".into(), r.macro_f1);
        Evaluation { json: serde_json::json!({ "loss": loss, "report": r }), text: format!("{}loss {loss:.4}\n", r.table()), values, predictions: Vec::new() }
    } else if task == Task::Regression {
        let r = regression_report(&gold_score, &pred_score);
        values.insert("pearson".into(), r.pearson);
        values.insert("spearman".into(), r.spearman);
        values.insert("mse".into(), r.mse);
        values.insert("mae".into(), r.mae);
        Evaluation { json: serde_json::json!({ "loss": loss, "report": r }), text: format!("{}loss {loss:.4}\n", r.table()), values, predictions: Vec::new() }
    } else {
        let r = classification_report(&gold, &pred, labels);
        values.insert("accuracy".into(), r.accuracy);
        values.insert("macro_f1".into(), r.macro_f1);
        let confusion = r.confusion_table(10).unwrap_or_default();
        Evaluation { json: serde_json::json!({ "loss": loss, "report": r }), text: format!("{}loss {loss:.4}\n{confusion}", r.table()), values, predictions: Vec::new() }
    };
    ev.json["truncated"] = serde_json::json!(truncated);
    if win.is_some() {
        ev.json["windowed"] = serde_json::json!(windowed_inputs);
    }
    ev.text.push_str(&cut);
    ev.predictions = rows;
    Ok(ev)
}

fn head_for(task: Task, n: usize) -> Head {
    match task {
        Task::Ner => Head::TokenClassification { num_labels: n },
        _ => Head::SequenceClassification { num_labels: n },
    }
}

/// The label set: the model's own `id2label` when it already names every training label (a
/// fine-tuned model trained further), else the sorted training labels.
fn label_set(task: Task, config_labels: &[String], train: &[Example]) -> Vec<String> {
    if task == Task::Regression {
        // One output, named as transformers names it (or as the model already does).
        return if config_labels.len() == 1 { config_labels.to_vec() } else { vec!["LABEL_0".to_string()] };
    }
    let mut seen: Vec<String> = train.iter().flat_map(|e| e.labels()).map(String::from).collect();
    // BIO: every entity type seen gets both its B- and I- tag, even if one never occurs in training.
    let types: Vec<String> = seen.iter().filter_map(|l| l.strip_prefix("B-").or_else(|| l.strip_prefix("I-")).map(String::from)).collect();
    if matches!(train.first(), Some(Example::Tokens { .. })) {
        for t in types {
            seen.push(format!("B-{t}"));
            seen.push(format!("I-{t}"));
        }
    }
    seen.sort();
    seen.dedup();
    let generic = config_labels.iter().all(|l| l.starts_with("LABEL_"));
    if !config_labels.is_empty() && !generic && !seen.is_empty() && seen.iter().all(|l| config_labels.contains(l)) {
        config_labels.to_vec()
    } else {
        seen
    }
}

/// Save `bert` as an HF model directory transformers loads unchanged.
pub fn save_hf(bert: &Bert, mem: Option<&MemoryConfig>, task: Task, labels: &[String], out: &Path, tokenizer_src: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::File { path: out.display().to_string(), detail: format!("cannot create: {e}") })?;
    let mut tensors = BTreeMap::new();
    for (name, t) in &bert.params {
        // BertForTokenClassification has no pooler (add_pooling_layer=False).
        if task == Task::Ner && name.starts_with("pooler.") {
            continue;
        }
        // The memory goes to memory.safetensors: model.safetensors stays a plain BERT.
        if name.starts_with("memory.") {
            continue;
        }
        tensors.insert(bert.hf_name(name), t.clone());
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(out.join("model.safetensors"), &tensors, Some(meta))?;
    let mut cfg = bert.config.raw.clone();
    let arch = format!("{}{}", bert.config.class_prefix(), if task == Task::Ner { "ForTokenClassification" } else { "ForSequenceClassification" });
    let obj = cfg.as_object_mut().ok_or_else(|| Error::File { path: "config.json".into(), detail: "not a JSON object".into() })?;
    obj.insert("architectures".into(), serde_json::json!([arch]));
    obj.insert("id2label".into(), serde_json::Value::Object(labels.iter().enumerate().map(|(i, l)| (i.to_string(), serde_json::json!(l))).collect()));
    obj.insert("label2id".into(), serde_json::Value::Object(labels.iter().enumerate().map(|(i, l)| (l.clone(), serde_json::json!(i))).collect()));
    obj.remove("num_labels");
    match task.problem_type() {
        Some(p) => obj.insert("problem_type".into(), serde_json::json!(p)),
        None => obj.remove("problem_type"),
    };
    obj.insert("engram_task".into(), serde_json::json!(task));
    let text = serde_json::to_string_pretty(&cfg).expect("config serialises");
    write_atomic(&out.join("config.json"), text.as_bytes())?;
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt"] {
        let src = tokenizer_src.join(f);
        if src.is_file() && src != out.join(f) {
            let bytes = std::fs::read(&src).map_err(|e| Error::File { path: src.display().to_string(), detail: e.to_string() })?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    // A source with only the slow tokenizer's files: write the fast one built from them too, as
    // transformers' save_pretrained does for a fast tokenizer.
    if !tokenizer_src.join("tokenizer.json").is_file() && !out.join("tokenizer.json").is_file() {
        write_atomic(&out.join("tokenizer.json"), crate::data::tokenize::tokenizer_json_from_vocab(tokenizer_src)?.as_bytes())?;
    }
    match mem {
        Some(cfg) => memory::save(bert, cfg, out),
        None => {
            // A plain model written over a memory model's directory must not pick up its memory.
            for f in [memory::CONFIG_FILE, memory::WEIGHTS_FILE] {
                let _ = std::fs::remove_file(out.join(f));
            }
            Ok(())
        }
    }
}

fn json_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File { path: path.display().to_string(), detail: format!("cannot read: {e}") })?;
    serde_json::from_str(&text).map_err(|e| Error::File { path: path.display().to_string(), detail: format!("not valid: {e}") })
}

enum Opt {
    AdamW(AdamW),
    Sgd(Sgd),
}

fn save_checkpoint(dir: &Path, bert: &Bert, mem: Option<&MemoryConfig>, opt: &Opt, state: &TrainerState, task: Task, args: &FinetuneArgs) -> Result<()> {
    save_hf(bert, mem, task, &state.labels, dir, &args.model)?;
    let named: Vec<(String, &Tensor)> = bert.params.iter().map(|(k, v)| (k.clone(), v)).collect();
    let opt_state = match opt {
        Opt::AdamW(a) => a.export_state(&named)?,
        Opt::Sgd(s) => s.export_state(&named)?,
    };
    write_safetensors(dir.join("optimizer.safetensors"), &opt_state, None)?;
    write_atomic(&dir.join("engram_state.json"), serde_json::to_string_pretty(state).expect("state serialises").as_bytes())?;
    write_atomic(&dir.join("trainer_state.json"), serde_json::to_string_pretty(&hf_trainer_state(state, args)).expect("state serialises").as_bytes())?;
    write_atomic(&dir.join("training_args.json"), serde_json::to_string_pretty(args).expect("args serialise").as_bytes())
}

/// Learning rate, weight decay, clip norm and momentum must be finite and in range: a NaN or an
/// infinity here would train to a NaN model and still save it as the best one.
fn check_hyperparameters(args: &FinetuneArgs) -> Result<()> {
    let bad = |what: &str, v: f64, range: &str| Err(Error::Value { op: "finetune", detail: format!("{what} {v} must be finite and {range}") });
    if !(args.lr.is_finite() && args.lr >= 0.0) {
        return bad("--lr", args.lr, "≥ 0");
    }
    if !(args.weight_decay.is_finite() && args.weight_decay >= 0.0) {
        return bad("--weight-decay", args.weight_decay, "≥ 0");
    }
    if !(args.max_grad_norm.is_finite() && args.max_grad_norm >= 0.0) {
        return bad("--max-grad-norm", args.max_grad_norm, "≥ 0 (0 = no clipping)");
    }
    let (beta1, beta2, eps) = args.adam;
    for (flag, v) in [("--adam-beta1", beta1), ("--adam-beta2", beta2)] {
        if !(v.is_finite() && (0.0..1.0).contains(&v)) {
            return bad(flag, v, "in [0, 1)");
        }
    }
    if !(eps.is_finite() && eps > 0.0) {
        return bad("--adam-epsilon", eps, "> 0");
    }
    if args.optimizer == OptimizerKind::Sgd && !(args.momentum.is_finite() && (0.0..1.0).contains(&args.momentum)) {
        return bad("--momentum", args.momentum, "in [0, 1)");
    }
    if !(args.label_smoothing.is_finite() && (0.0..1.0).contains(&args.label_smoothing)) {
        return bad("--label-smoothing", args.label_smoothing, "in [0, 1)");
    }
    if args.label_smoothing > 0.0 && matches!(args.task, Task::Multilabel | Task::Regression) {
        return Err(Error::Value { op: "finetune", detail: "--label-smoothing applies to the cross-entropy tasks (classify, pair, ner), not to multilabel or regression".into() });
    }
    if args.class_weights.is_some() && args.task == Task::Regression {
        return Err(Error::Value { op: "finetune", detail: "--class-weights applies to classes (classify, pair, ner; multilabel's positive weights), not to regression".into() });
    }
    if !(args.early_stopping_threshold.is_finite() && args.early_stopping_threshold >= 0.0) {
        return bad("--early-stopping-threshold", args.early_stopping_threshold, "≥ 0");
    }
    if args.eval_steps == Some(0) {
        return Err(Error::Value { op: "finetune", detail: "--eval-steps must be at least 1 (leave it out to evaluate after every epoch)".into() });
    }
    if args.save_steps == Some(0) {
        return Err(Error::Value { op: "finetune", detail: "--save-steps must be at least 1 (leave it out for a checkpoint per epoch only)".into() });
    }
    Ok(())
}

/// A non-finite loss or gradient norm stops training with an error rather than letting the
/// optimizer write NaN into every weight: the best model of the epochs before stays in `out`.
fn check_finite(what: &str, v: f64, state: &TrainerState, out: &Path) -> Result<()> {
    if v.is_finite() {
        return Ok(());
    }
    let kept = match state.best_epoch {
        Some(e) => format!("the best model so far (epoch {e}) is in {}", out.display()),
        None => "no model was written".to_string(),
    };
    Err(Error::Value {
        op: "finetune",
        detail: format!(
            "training diverged: the {what} is {v} at step {} (epoch {}); {kept}; try a lower --lr or --max-grad-norm 1",
            state.global_step + 1,
            state.epoch + 1
        ),
    })
}

/// Fine-tune `args.model` on `args.train`, evaluating on `args.dev` every epoch; the best model
/// goes to `args.out` (HF format), the resumable state to `args.out/checkpoint`. On the CPU the
/// whole run is driven from a worker of the thread pool (`util::on_pool`), so each op's
/// parallel loop starts without a hand-over to the pool.
pub fn finetune(args: &FinetuneArgs) -> Result<Summary> {
    // transformers' metric_for_best_model names may carry the "eval_" prefix.
    if let Some(m) = args.metric.strip_prefix("eval_") {
        let mut a = args.clone();
        a.metric = m.to_string();
        return finetune(&a);
    }
    if args.device == Device::Cpu {
        crate::util::on_pool(|| finetune_here(args))
    } else {
        finetune_here(args)
    }
}

fn finetune_here(args: &FinetuneArgs) -> Result<Summary> {
    if args.max_steps == Some(0) {
        return Err(Error::Value { op: "finetune", detail: "--max-steps must be at least 1 (leave it out to train for --epochs)".into() });
    }
    if args.batch_size == 0 || args.eval_batch_size == 0 || args.grad_accum == 0 || args.epochs == 0 {
        return Err(Error::Value { op: "finetune", detail: "batch size, eval batch size, gradient accumulation and epochs must be at least 1".into() });
    }
    if !(0.0..=1.0).contains(&args.warmup_ratio) {
        return Err(Error::Value { op: "finetune", detail: format!("warmup ratio {} must be in [0, 1]", args.warmup_ratio) });
    }
    check_hyperparameters(args)?;
    let task = args.task;
    // Known before the first epoch, not after it.
    if !task.metrics().contains(&args.metric.as_str()) {
        return Err(Error::Value {
            op: "finetune",
            detail: format!("unknown metric \"{}\" for the {} task (one of: {})", args.metric, serde_json::json!(task).as_str().unwrap_or("?"), task.metrics().join(", ")),
        });
    }
    check_tagging(task, args.tagging(), args.label_all_tokens)?;
    let names = args.label_names.as_deref();
    if let Some(n) = names {
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = n.iter().find(|l| l.is_empty() || !seen.insert(l.as_str())) {
            return Err(Error::Value { op: "--label-names", detail: format!("label \"{d}\" is empty or given twice") });
        }
        if matches!(task, Task::Regression) {
            return Err(Error::Value { op: "--label-names", detail: "a regression task has no class labels".into() });
        }
    }
    let mut train = load_examples(task, &args.train, args.max_train_examples, args.label_sep)?;
    name_ids(task, &mut train, names, &args.train)?;
    if train.is_empty() {
        return file_err(&args.train, "no training examples left (--max-train-examples 0)");
    }
    let mut dev = load_examples(task, &args.dev, args.max_eval_examples, args.label_sep)?;
    name_ids(task, &mut dev, names, &args.dev)?;
    let ckpt = args.out.join("checkpoint");
    // Our counters: engram_state.json, or (checkpoints from before it) trainer_state.json.
    let state_file = ["engram_state.json", "trainer_state.json"].map(|f| ckpt.join(f)).into_iter().find(|p| p.is_file());
    let resuming = args.resume && state_file.is_some();
    if args.resume && !resuming {
        eprintln!("engram: no checkpoint in {}; starting from scratch", ckpt.display());
    }
    let mut state: TrainerState = match (&state_file, resuming) {
        (Some(f), true) => json_file(f)?,
        _ => TrainerState::default(),
    };
    let src_dir = if resuming { ckpt.clone() } else { args.model.clone() };
    let config_labels = crate::models::bert::BertConfig::from_file(src_dir.join("config.json"))?.id2label;
    let labels = match (resuming, names) {
        (true, _) => state.labels.clone(),
        (false, Some(n)) => n.to_vec(),
        (false, None) => label_set(task, &config_labels, &train),
    };
    if labels.is_empty() {
        return file_err(&args.train, "no example has a label: nothing to learn");
    }
    if resuming {
        check_resume(args, &state, &json_file(&ckpt.join("training_args.json"))?, &train, &ckpt)?;
    } else {
        state.train_examples = Some(train.len());
        state.train_fingerprint = Some(fingerprint(&train));
    }
    if state.class_weights.is_none() {
        state.class_weights = args.class_weights.as_ref().map(|c| c.resolve(task, &labels, &train, &args.train)).transpose()?;
    }
    if let (Some(w), true) = (&state.class_weights, args.progress) {
        let shown: Vec<String> = labels.iter().zip(w).map(|(l, w)| format!("{l} {w:.4}")).collect();
        eprintln!("engram: class weights: {}", shown.join(", "));
    }
    state.labels = labels.clone();
    state.args_seed = args.seed;
    let label_ids: HashMap<String, usize> = labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect();
    let checked: &[(&PathBuf, &Vec<Example>)] = if task == Task::Ner { &[(&args.train, &train)] } else { &[(&args.train, &train), (&args.dev, &dev)] };
    for &(path, set) in checked {
        if let Some(l) = set.iter().flat_map(|e| e.labels()).find(|l| !label_ids.contains_key(*l)) {
            let not_in = if names.is_some() { "is not one of --label-names" } else { "does not occur in the training data" };
            return file_err(path, format!("label \"{l}\" {not_in} (labels: {})", labels.join(", ")));
        }
    }
    let (mut bert, report) = Bert::load(&src_dir, head_for(task, labels.len()), args.seed)?;
    bert.bf16 = args.bf16;
    if !resuming && report.initialized.is_empty() && config_labels != labels {
        // The checkpoint's head was trained for other labels: start the head afresh.
        bert.reinit_head(args.seed)?;
        if args.progress {
            eprintln!("engram: the checkpoint's head has labels [{}]; re-initialised for [{}]", config_labels.join(", "), labels.join(", "));
        }
    }
    if args.progress && !report.initialized.is_empty() {
        eprintln!("engram: newly initialised: {}", report.initialized.join(", "));
    }
    if args.progress && !report.mismatched.is_empty() {
        eprintln!("engram: head re-initialised (shape mismatch): {}", report.mismatched.join(", "));
    }
    // Memory: the checkpoint's when resuming, else the one asked for, else the source model's own.
    let mem_cfg = if resuming { memory::read_config(&ckpt)? } else { args.memory.clone().or(memory::read_config(&args.model)?) };
    let mem = mem_cfg.as_ref();
    if let Some(cfg) = mem {
        if task == Task::Ner {
            return Err(Error::Value { op: "finetune", detail: "memory segments are for sequence tasks (classify, pair, multilabel, regression), not token classification".into() });
        }
        let loaded = memory::attach(&mut bert, cfg, &src_dir, args.seed)?;
        if args.progress {
            eprintln!(
                "engram: {:?} over segments of {} tokens + {} memory tokens (bptt {}), memory {}",
                cfg.mode,
                cfg.segment_len,
                cfg.memory_tokens,
                cfg.bptt.map_or("full".to_string(), |k| k.to_string()),
                if loaded { "loaded" } else { "initialised" }
            );
        }
    }
    if args.freeze_backbone {
        let frozen: Vec<String> = bert.params.keys().filter(|n| !bert.is_head_param(n) && !n.starts_with("memory.")).cloned().collect();
        for (name, t) in bert.params.iter_mut() {
            if frozen.contains(name) {
                *t = t.detach();
            }
        }
    }
    if args.device != Device::Cpu {
        let frozen: Vec<String> = bert.params.iter().filter(|(_, t)| !t.is_tracked()).map(|(k, _)| k.clone()).collect();
        bert.to_device(args.device)?;
        for k in frozen {
            let t = bert.params.get_mut(&k).expect("name from the same map");
            *t = t.detach();
        }
    }
    if args.max_length > bert.config.max_tokens() && args.progress {
        eprintln!("engram: --max-length {} is more than the model's {} positions; inputs are cut at {}", args.max_length, bert.config.max_tokens(), bert.config.max_tokens());
    }
    let tok = BertTokenizer::from_dir(&args.model, args.max_length.min(bert.config.max_tokens()))?.truncate_left(args.truncate_left)?.fits(bert.config.vocab_size)?;
    // --stride: long sentences train as their windows, each word labelled once (the windows are
    // the examples the epochs shuffle and batch).
    let train = match windowed(&tok, &train, args.stride)? {
        Some(w) if w.len() > train.len() => {
            if args.progress {
                eprintln!("engram: {} training inputs longer than {} tokens are read in overlapping windows: {} examples become {}", long_inputs(&w), tok.max_len(), train.len(), w.len());
            }
            w.into_iter().map(|x| x.2).collect()
        }
        _ => train,
    };

    let micro_per_epoch = train.len().div_ceil(args.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(args.grad_accum) as u64;
    state.steps_per_epoch = steps_per_epoch;
    // --max-steps: as many epochs as it takes, the last one cut at the step.
    let (epochs, total) = match args.max_steps {
        Some(m) => (m.div_ceil(steps_per_epoch) as usize, m),
        None => (args.epochs, steps_per_epoch * args.epochs as u64),
    };
    let warmup = args.warmup_steps.unwrap_or_else(|| (args.warmup_ratio * total as f64).ceil() as u64);
    let sched = Schedule { kind: args.lr_scheduler, base_lr: args.lr, warmup, total };
    let mut opt = match args.optimizer {
        OptimizerKind::Adamw => Opt::AdamW(AdamW::new(AdamWConfig { beta1: args.adam.0, beta2: args.adam.1, eps: args.adam.2 })),
        OptimizerKind::Sgd => Opt::Sgd(Sgd::new(SgdConfig { momentum: args.momentum, dampening: 0.0, nesterov: false })),
    };
    if resuming {
        // The saved state belongs to one optimizer; resuming with another would silently start it afresh.
        let saved: serde_json::Value = json_file(&ckpt.join("training_args.json"))?;
        let want = serde_json::to_value(args.optimizer).expect("optimizer serialises");
        if saved.get("optimizer").is_some_and(|o| *o != want) {
            return file_err(
                ckpt.join("training_args.json"),
                format!("the checkpoint was trained with --optimizer {}; resume with the same optimizer (asked: {want})", saved["optimizer"]),
            );
        }
        let st = read_safetensors(ckpt.join("optimizer.safetensors"))?;
        let named: Vec<(String, &Tensor)> = bert.params.iter().map(|(k, v)| (k.clone(), v)).collect();
        match &mut opt {
            Opt::AdamW(a) => a.import_state(state.global_step, &named, &st)?,
            Opt::Sgd(s) => s.import_state(&named, &st)?,
        }
    }
    if args.progress {
        eprintln!(
            "engram finetune: {} train / {} dev examples, {} labels, {} epochs × {steps_per_epoch} steps{} (batch {} × accumulation {}), lr {:e} ({}, {warmup} warmup steps), {} on {:?}{}",
            train.len(),
            dev.len(),
            labels.len(),
            epochs,
            args.max_steps.map_or(String::new(), |m| format!(", stopping at step {m}")),
            args.batch_size,
            args.grad_accum,
            args.lr,
            args.lr_scheduler.name(),
            args.optimizer.name(),
            args.device,
            if resuming { format!(", resuming at epoch {} step {}", state.epoch + 1, state.global_step) } else { String::new() }
        );
    }
    let train_lens: Vec<usize> = if args.group_by_length { train.iter().map(example_chars).collect() } else { Vec::new() };
    let start = Instant::now();
    let first_step = state.global_step;
    let (mut seen_examples, mut seen_tokens) = (0usize, 0usize);
    // --profile: per-op times of the training tapes, and wall time of what runs around them.
    let mut prof = Profile::default();
    let (mut t_batch, mut t_opt, mut t_eval) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut stopped_early = false;
    let mut interrupted = false;
    'epochs: while state.epoch < epochs {
        let epoch = state.epoch;
        let ord = order(train.len(), args.seed, epoch);
        let ord = if args.group_by_length { group_by_length(ord, &train_lens, args.batch_size) } else { ord };
        let micro: Vec<&[usize]> = ord.chunks(args.batch_size).collect();
        let bar = if args.progress { ProgressBar::new(micro.len() as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:28}] {pos}/{len} {msg} eta {eta}").expect("valid template").progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        bar.set_position(state.micro_in_epoch as u64);
        let epoch_start = Instant::now();
        let (mut epoch_loss, mut epoch_n) = (0.0, 0usize);
        let mut i = state.micro_in_epoch;
        while i < micro.len() {
            let group = &micro[i..(i + args.grad_accum).min(micro.len())];
            let mut grads = Grads::default();
            let mut loss_sum = 0.0;
            for idx in group.iter() {
                let t0 = Instant::now();
                let ex: Vec<&Example> = idx.iter().map(|&j| &train[j]).collect();
                let (inputs, y) = encode(&tok, task, mem, &ex, &label_ids, &args.train, Labelling::Train { all_tokens: args.label_all_tokens })?;
                t_batch += t0.elapsed();
                seen_examples += ex.len();
                seen_tokens += inputs.tokens();
                state.input_tokens_seen += inputs.tokens() as u64;
                let tape = Tape::training(mix(args.seed, state.global_micro)).bf16(args.bf16).checkpointing(args.gradient_checkpointing);
                let tape = if args.profile { tape.profiled() } else { tape };
                state.global_micro += 1;
                let logits = logits(&bert, mem, &tape, &inputs, true)?;
                let loss = task_loss(task, &tape, &logits, &y.to_device(args.device)?, LossSpec::of(args, &state))?;
                loss_sum += loss.item()?;
                grads.accumulate(tape.backward(&loss)?)?;
                if let Some(p) = tape.profile() {
                    prof.merge(&p);
                }
            }
            let t0 = Instant::now();
            check_finite("training loss", loss_sum, &state, &args.out)?;
            grads.scale(1.0 / group.len() as f64);
            let trainable: Vec<&Tensor> = bert.params.values().filter(|t| t.is_tracked()).collect();
            let grad_norm = if args.max_grad_norm > 0.0 {
                let norm = clip_grad_norm(&mut grads, &trainable, args.max_grad_norm)?;
                check_finite("gradient norm", norm, &state, &args.out)?;
                Some(norm)
            } else {
                None
            };
            let lr = sched.lr(state.global_step);
            let named: Vec<(String, &mut Tensor)> = bert.params.iter_mut().filter(|(_, t)| t.is_tracked()).map(|(k, v)| (k.clone(), v)).collect();
            let mut groups = hf_param_groups(named, args.weight_decay);
            match &mut opt {
                Opt::AdamW(a) => a.step(&mut groups, &grads, lr)?,
                Opt::Sgd(s) => s.step(&mut groups, &grads, lr)?,
            }
            t_opt += t0.elapsed();
            let step_loss = loss_sum / group.len() as f64;
            state.global_step += 1;
            state.loss_log.push((state.global_step, step_loss));
            state.lr_log.push((state.global_step, lr));
            if let Some(g) = grad_norm {
                state.grad_norm_log.push((state.global_step, g));
            }
            epoch_loss += step_loss;
            epoch_n += 1;
            i += group.len();
            state.micro_in_epoch = i;
            let secs = start.elapsed().as_secs_f64();
            bar.set_position(i as u64);
            let gnorm = grad_norm.map_or(String::new(), |g| format!(" grad norm {g:.3}"));
            bar.set_message(format!("loss {step_loss:.4} lr {lr:.2e}{gnorm} {:.1} ex/s {:.0} tok/s", seen_examples as f64 / secs, seen_tokens as f64 / secs));
            if args.eval_steps.is_some_and(|n| state.global_step.is_multiple_of(n)) {
                let t0 = Instant::now();
                let avg = epoch_loss / epoch_n.max(1) as f64;
                let done = bar.suspend(|| dev_round(args, &bert, mem, &tok, &dev, &labels, &mut state, (epoch, epochs), avg, epoch_start.elapsed().as_secs_f64()))?;
                t_eval += t0.elapsed();
                write_metrics(args, &state)?;
                if done && (state.global_step < total) {
                    save_checkpoint(&ckpt, &bert, mem, &opt, &state, task, args)?;
                    bar.abandon();
                    if args.progress {
                        eprintln!("early stop: no {} improvement in {} evaluations", args.metric, state.epochs_without_improvement);
                    }
                    state.epoch += 1;
                    stopped_early = true;
                    break 'epochs;
                }
            }
            let stop_now = args.stop_after_steps.is_some_and(|s| state.global_step >= s);
            if args.save_steps.is_some_and(|s| state.global_step.is_multiple_of(s)) || stop_now {
                save_checkpoint(&ckpt, &bert, mem, &opt, &state, task, args)?;
            }
            if stop_now {
                bar.abandon_with_message(format!("stopped after step {} (checkpoint saved)", state.global_step));
                interrupted = true;
                break 'epochs;
            }
            if args.max_steps.is_some_and(|m| state.global_step >= m) {
                break; // the last (short) epoch ends here: its evaluation and checkpoint follow
            }
        }
        bar.finish_and_clear();
        // Per epoch, or (with --eval-steps) once more after the last step if it was not evaluated.
        let last = state.epoch + 1 == epochs;
        let due = args.eval_steps.is_none() || (last && state.last_eval_step != Some(state.global_step));
        let mut done = false;
        if due {
            let t0 = Instant::now();
            done = dev_round(args, &bert, mem, &tok, &dev, &labels, &mut state, (epoch, epochs), epoch_loss / epoch_n.max(1) as f64, epoch_start.elapsed().as_secs_f64())?;
            t_eval += t0.elapsed();
        }
        state.epoch += 1;
        state.micro_in_epoch = 0;
        save_checkpoint(&ckpt, &bert, mem, &opt, &state, task, args)?;
        write_metrics(args, &state)?;
        if done && state.epoch < epochs {
            if args.progress {
                eprintln!("early stop: no {} improvement for {} epoch(s)", args.metric, state.epochs_without_improvement);
            }
            stopped_early = true;
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if args.profile {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let text = format!(
            "per-op time of the training steps ({} micro-batches; on CUDA meaningful only with ENGRAM_CUDA_SYNC=1)\n{prof}\n\
             {:<18} {:>46.1}\n{:<18} {:>46.1}\n{:<18} {:>46.1}\n{:<18} {:>46.1}\n",
            prof.get(loss_op(task)).map_or(0, |t| t.fwd_calls),
            "tokenise + batch",
            ms(t_batch),
            "clip + optimizer",
            ms(t_opt),
            "dev evaluation",
            ms(t_eval),
            "wall, all epochs",
            secs * 1e3
        );
        let path = args.out.join("profile.txt");
        std::fs::write(&path, &text).map_err(|e| Error::File { path: path.display().to_string(), detail: format!("cannot write: {e}") })?;
        if args.progress {
            eprintln!("{text}(written to {})", path.display());
        }
    }
    let mut test_json = None;
    if let (Some(test), false) = (&args.test, interrupted) {
        let (best, _, _, best_mem) = load_finetuned(&args.out, args.device, if args.bf16 { Precision::Bf16 } else { Precision::F32 })?;
        let mut ex = load_examples(task, test, args.max_eval_examples, args.label_sep)?;
        name_ids(task, &mut ex, args.label_names.as_deref(), test)?;
        let ev = evaluate(&best, best_mem.as_ref(), &tok, task, &ex, &labels, args.eval_batch_size, test, LossSpec::of(args, &state), args.tagging())?;
        if args.progress {
            eprintln!("test ({}):\n{}", test.display(), ev.text);
        }
        write_predictions(&args.out.join("test_predictions.jsonl"), &ev.predictions)?;
        state.history.push(serde_json::json!({ "test": { "metrics": ev.json, "values": ev.values } }));
        test_json = Some(serde_json::json!(ev.values));
        write_metrics(args, &state)?;
    }
    if !interrupted {
        let run = RunTotals { seconds: secs, examples: seen_examples, steps: state.global_step - first_step };
        write_atomic(&args.out.join("all_results.json"), serde_json::to_string_pretty(&all_results(&state, run)).expect("results serialise").as_bytes())?;
    }
    Ok(Summary {
        best_metric: state.best_metric.unwrap_or(f64::NAN),
        best_epoch: state.best_epoch.unwrap_or(0),
        best_step: state.best_step.unwrap_or(0),
        metric: args.metric.clone(),
        epochs_run: state.epoch,
        stopped_early,
        test: test_json,
        out: args.out.clone(),
        train_examples_per_s: seen_examples as f64 / secs,
        train_tokens_per_s: seen_tokens as f64 / secs,
        interrupted,
        global_step: state.global_step,
    })
}

/// What this process trained: for `all_results.json`'s throughput.
struct RunTotals {
    seconds: f64,
    examples: usize,
    steps: u64,
}

/// `all_results.json` as transformers' example scripts write it (`trainer.save_metrics`):
/// `epoch`, `train_loss` (the mean step loss), `train_runtime` and throughput of this run,
/// `eval_*` of the kept (best) dev evaluation and `test_*` of the test split.
fn all_results(state: &TrainerState, run: RunTotals) -> serde_json::Value {
    let mut all = serde_json::Map::new();
    let round = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    all.insert("epoch".into(), serde_json::json!(round(state.global_step as f64 / state.steps_per_epoch.max(1) as f64, 4)));
    let losses: Vec<f64> = state.loss_log.iter().map(|&(_, l)| l).collect();
    if !losses.is_empty() {
        all.insert("train_loss".into(), serde_json::json!(losses.iter().sum::<f64>() / losses.len() as f64));
    }
    all.insert("train_runtime".into(), serde_json::json!(round(run.seconds, 4)));
    all.insert("train_samples_per_second".into(), serde_json::json!(round(run.examples as f64 / run.seconds.max(1e-9), 3)));
    all.insert("train_steps_per_second".into(), serde_json::json!(round(run.steps as f64 / run.seconds.max(1e-9), 3)));
    let best = super::card::best_evaluation(&state.history, state.best_step);
    if let Some(values) = best.and_then(|b| b["values"].as_object()) {
        for (k, v) in values {
            all.insert(format!("eval_{k}"), v.clone());
        }
    }
    if let Some(values) = super::card::test_entry(&state.history).and_then(|t| t["values"].as_object()) {
        for (k, v) in values {
            all.insert(format!("test_{k}"), v.clone());
        }
    }
    serde_json::Value::Object(all)
}

/// One evaluation on dev during training: record it, keep the model in `args.out` when it is the
/// best so far, and say whether early stopping's patience has run out.
#[allow(clippy::too_many_arguments)]
fn dev_round(args: &FinetuneArgs, bert: &Bert, mem: Option<&MemoryConfig>, tok: &BertTokenizer, dev: &[Example], labels: &[String], state: &mut TrainerState, (epoch, epochs): (usize, usize), train_loss: f64, seconds: f64) -> Result<bool> {
    let ev = evaluate(bert, mem, tok, args.task, dev, labels, args.eval_batch_size, &args.dev, LossSpec::of(args, state), args.tagging())?;
    let value = *ev.values.get(&args.metric).ok_or_else(|| Error::Value {
        op: "finetune",
        detail: format!("unknown metric \"{}\" (one of: {})", args.metric, ev.values.keys().cloned().collect::<Vec<_>>().join(", ")),
    })?;
    let (better, improved) = compare_metric(state.best_metric, value, lower_is_better(&args.metric), args.early_stopping_threshold);
    if args.progress {
        let at = if args.eval_steps.is_some() { format!(" step {}", state.global_step) } else { String::new() };
        eprintln!(
            "epoch {}/{}{at}: train loss {train_loss:.4}, dev {} {value:.4}{} ({seconds:.1} s)",
            epoch + 1,
            epochs,
            args.metric,
            if better { " (best so far)" } else { "" },
        );
        eprint!("{}", ev.text);
    }
    state.history.push(serde_json::json!({
        "epoch": epoch + 1, "step": state.global_step, "train_loss": train_loss,
        "dev": ev.json, "values": ev.values, args.metric.clone(): value, "seconds": seconds,
    }));
    state.last_eval_step = Some(state.global_step);
    if better {
        state.best_metric = Some(value);
        state.best_epoch = Some(epoch + 1);
        state.best_step = Some(state.global_step);
        save_hf(bert, mem, args.task, labels, &args.out, &args.model)?;
    }
    if improved {
        state.epochs_without_improvement = 0;
    } else {
        state.epochs_without_improvement += 1;
    }
    Ok(args.patience.is_some_and(|p| state.epochs_without_improvement >= p))
}

/// Whether a dev value beats the best so far (the model is kept), and whether it beats it by
/// more than `threshold` (early stopping's count starts again only then), as transformers'
/// Trainer and `EarlyStoppingCallback` decide.
fn compare_metric(best: Option<f64>, value: f64, lower_is_better: bool, threshold: f64) -> (bool, bool) {
    match best {
        None => (true, true),
        Some(b) => {
            let better = if lower_is_better { value < b } else { value > b };
            (better, better && (value - b).abs() > threshold)
        }
    }
}

/// `metrics.json`, `training.svg` and the model card (`README.md`, see `card`) of the run so far.
fn write_metrics(args: &FinetuneArgs, state: &TrainerState) -> Result<()> {
    let json = serde_json::json!({
        "metric": args.metric, "best": state.best_metric, "best_epoch": state.best_epoch, "best_step": state.best_step,
        "epochs": state.history, "loss_per_step": state.loss_log, "learning_rate_per_step": state.lr_log, "grad_norm_per_step": state.grad_norm_log,
    });
    std::fs::create_dir_all(&args.out).map_err(|e| Error::File { path: args.out.display().to_string(), detail: e.to_string() })?;
    write_atomic(&args.out.join("metrics.json"), serde_json::to_string_pretty(&json).expect("metrics serialise").as_bytes())?;
    let dev: Vec<(u64, f64)> = state
        .history
        .iter()
        .filter_map(|h| Some((h.get("step")?.as_u64()?, h.get(&args.metric)?.as_f64()?)))
        .collect();
    let svg = super::plot::svg(&format!("engram finetune: {}", args.train.display()), &state.loss_log, &dev, &args.metric);
    write_atomic(&args.out.join("training.svg"), svg.as_bytes())?;
    let card = super::card::CardInputs {
        history: &state.history,
        best_epoch: state.best_epoch,
        best_step: state.best_step,
        steps_per_epoch: state.steps_per_epoch,
        labels: &state.labels,
        class_weights: state.class_weights.as_deref(),
    };
    write_atomic(&args.out.join("README.md"), super::card::model_card(args, &card).as_bytes())
}

/// Load a fine-tuned directory: the task from `engram_task` or `architectures`, labels from `id2label`.
fn load_finetuned(dir: &Path, device: Device, precision: Precision) -> Result<(Bert, Task, Vec<String>, Option<MemoryConfig>)> {
    let cfg = crate::models::bert::BertConfig::from_file(dir.join("config.json"))?;
    if cfg.id2label.is_empty() {
        return file_err(dir.join("config.json"), "has no id2label: not a fine-tuned classification model");
    }
    // engram's own models say their task; others are read the way transformers reads them:
    // `problem_type` if set, else one output is a regression (a cross-encoder's score).
    let problem = cfg.raw.get("problem_type").and_then(|v| v.as_str());
    let task = match cfg.raw.get("engram_task").and_then(|v| v.as_str()) {
        Some("ner") => Task::Ner,
        Some("pair") => Task::Pair,
        Some("classify") => Task::Classify,
        Some("multilabel") => Task::Multilabel,
        Some("regression") => Task::Regression,
        _ if cfg.architectures.iter().any(|a| a.ends_with("ForTokenClassification")) => Task::Ner,
        _ if problem == Some("multi_label_classification") => Task::Multilabel,
        _ if problem == Some("regression") => Task::Regression,
        _ if problem.is_none() && cfg.id2label.len() == 1 => Task::Regression,
        _ => Task::Classify,
    };
    let labels = cfg.id2label.clone();
    if precision == Precision::Int8 && device != Device::Cpu {
        return Err(Error::Device(format!("--{} runs on the CPU (drop --device cuda)", precision_flag(precision))));
    }
    let (mut bert, _) = Bert::load_with(dir, head_for(task, labels.len()), 0, precision)?;
    let mem = memory::read_config(dir)?;
    if let Some(cfg) = &mem {
        let loaded = memory::attach(&mut bert, cfg, dir, 0)?;
        if !loaded && cfg.mode == memory::Mode::Memory {
            return file_err(dir.join(memory::CONFIG_FILE), "names a memory model but memory.safetensors does not match it");
        }
    }
    if device != Device::Cpu {
        bert.to_device(device)?;
    }
    Ok((bert, task, labels, mem))
}

/// `engram eval`: the report text and the metrics JSON of a fine-tuned model on a data file.
/// The command-line flag of a precision.
pub fn precision_flag(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Int8 => "int8",
        Precision::Bf16 => "bf16",
    }
}

/// How `evaluate_dir` runs a model (`engram eval`'s flags).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Truncation length in tokens (capped at the model's positions).
    pub max_length: usize,
    /// Examples per forward pass.
    pub batch_size: usize,
    pub device: Device,
    pub precision: Precision,
    /// Multilabel data: the separator of the labels in one field.
    pub label_sep: char,
    /// Token classification: how long inputs (overlapping windows, see `windows`) and words
    /// (see `words`) are read.
    pub tagging: TagOptions,
    /// Write each example's input, gold answer and prediction here (JSONL, the file's order).
    pub predictions: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { max_length: 128, batch_size: DEFAULT_EVAL_BATCH, device: Device::Cpu, precision: Precision::F32, label_sep: ',', tagging: TagOptions::default(), predictions: None }
    }
}

/// Score a fine-tuned model directory on a labelled file: (report text, metrics JSON).
pub fn evaluate_dir(dir: &Path, data: &Path, opts: &EvalOptions) -> Result<(String, serde_json::Value)> {
    if opts.batch_size == 0 {
        return Err(Error::Value { op: "eval", detail: "--batch-size must be at least 1".into() });
    }
    if let Some(parent) = opts.predictions.as_deref().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        return Err(Error::File { path: parent.display().to_string(), detail: "is not a directory: --predictions cannot be written there".into() });
    }
    let (bert, task, labels, mem) = load_finetuned(dir, opts.device, opts.precision)?;
    check_tagging(task, opts.tagging, false)?;
    let mut ex = load_examples(task, data, None, opts.label_sep)?;
    // Class ids (an HF datasets export) are the model's label ids, as transformers reads them.
    let numeric = |l: &String| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit());
    if !labels.iter().all(numeric) && integer_labels(&ex) {
        name_labels(&mut ex, &labels, data)?;
    }
    let tok = BertTokenizer::from_dir(dir, opts.max_length.min(bert.config.max_tokens()))?.fits(bert.config.vocab_size)?;
    let run = || evaluate(&bert, mem.as_ref(), &tok, task, &ex, &labels, opts.batch_size, data, LossSpec::default(), opts.tagging);
    let ev = if opts.device == Device::Cpu { crate::util::on_pool(run)? } else { run()? };
    if let Some(path) = &opts.predictions {
        write_predictions(path, &ev.predictions)?;
    }
    Ok((ev.text, serde_json::json!({ "metrics": ev.json, "values": ev.values })))
}

/// Words of a text with their character spans: whitespace-separated, punctuation split off
/// (the way BERT's pre-tokenizer sees words).
pub fn split_words(text: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, usize)> = None;
    for (ci, ch) in text.chars().enumerate() {
        if ch.is_whitespace() || ch.is_ascii_punctuation() {
            if let Some((w, s)) = cur.take() {
                let len = w.chars().count();
                out.push((w, s, s + len));
            }
            if !ch.is_whitespace() {
                out.push((ch.to_string(), ci, ci + 1));
            }
        } else {
            match &mut cur {
                Some((w, _)) => w.push(ch),
                None => cur = Some((ch.to_string(), ci)),
            }
        }
    }
    if let Some((w, s)) = cur {
        let len = w.chars().count();
        out.push((w, s, s + len));
    }
    out
}

/// The tags of pre-split inputs, each with whether it was truncated (words past the window
/// tagged "O"); with a stride, long inputs run as overlapping windows instead (see `windows`);
/// each word's tag and probability come from its sub-tokens by the options' aggregation.
fn tag_words(bert: &Bert, tok: &BertTokenizer, inputs: Vec<Vec<String>>, labels: &[String], batch_size: usize, tagging: TagOptions) -> Result<Vec<Tagged>> {
    let ex: Vec<Example> = inputs.into_iter().map(|w| {
        let tags = vec![String::new(); w.len()];
        Example::tokens(w, tags)
    }).collect();
    let win = windowed(tok, &ex, tagging.stride)?;
    let items = run_items(&ex, win.as_deref());
    let mut out: Vec<Tagged> = ex
        .iter()
        .map(|e| {
            let n = if let Example::Tokens { words, .. } = e { words.len() } else { 0 };
            Tagged { tags: vec!["O".to_string(); n], scores: vec![0.0; n], truncated: false }
        })
        .collect();
    for chunk in items.chunks(batch_size.max(1)) {
        let words: Vec<Vec<String>> = chunk.iter().map(|(_, _, e)| if let Example::Tokens { words, .. } = e { words.clone() } else { Vec::new() }).collect();
        let batch = tok.encode_words(&words)?;
        let logits = bert.logits(&bert.inference_tape(), &batch, false)?.to_f64_vec();
        for (b, &(src, first, e)) in chunk.iter().enumerate() {
            let Example::Tokens { words, scored, .. } = e else { unreachable!() };
            let tags = words::word_tags(&batch, &logits, b, words.len(), labels.len(), tagging.aggregation);
            for i in scored.clone() {
                let Some((k, prob)) = tags[i] else { continue };
                out[src].tags[first + i].clone_from(&labels[k]);
                out[src].scores[first + i] = prob;
            }
            out[src].truncated |= batch.truncated[b];
        }
    }
    Ok(out)
}

/// Word tags of one input, each with its probability, and whether the input was cut.
struct Tagged {
    tags: Vec<String>,
    scores: Vec<f64>,
    truncated: bool,
}

/// How a [`Predictor`] runs: `engram predict`'s options.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Truncation length in tokens (capped at the model's positions).
    pub max_length: usize,
    pub batch_size: usize,
    pub device: Device,
    pub precision: Precision,
    /// Memory models: add the mean norm of the memory states after each segment.
    pub memory_norms: bool,
    /// NER: read inputs longer than the window in overlapping windows (see `windows`).
    pub stride: Option<usize>,
    /// NER: how a word's tag comes from its sub-tokens (see `words`).
    pub aggregation: Aggregation,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { max_length: 128, batch_size: 32, device: Device::Cpu, precision: Precision::F32, memory_norms: false, stride: None, aggregation: Aggregation::First }
    }
}

impl PredictOptions {
    fn tagging(&self) -> TagOptions {
        TagOptions { stride: self.stride, aggregation: self.aggregation }
    }
}

/// A fine-tuned model (engram's or transformers' `*ForSequenceClassification` /
/// `*ForTokenClassification` directory, memory models included) loaded once and run on any
/// number of [`predict`](Predictor::predict) calls — `engram predict` as a library:
///
/// ```no_run
/// use engram::train::{Output, PredictOptions, Predictor};
/// let model = Predictor::load("runs/rt-minilm".as_ref(), PredictOptions::default())?;
/// for p in model.predict(&["a gripping, funny film".to_string()])? {
///     if let Output::Label { label, probs } = &p.output {
///         println!("{label} ({:.3})", probs.get(label).unwrap_or(0.0));
///     }
/// }
/// # Ok::<(), engram::Error>(())
/// ```
pub struct Predictor {
    bert: Bert,
    task: Task,
    labels: Vec<String>,
    mem: Option<MemoryConfig>,
    tok: BertTokenizer,
    dir: PathBuf,
    opts: PredictOptions,
}

impl Predictor {
    pub fn load(dir: &Path, opts: PredictOptions) -> Result<Predictor> {
        if opts.batch_size == 0 {
            return Err(Error::Value { op: "predict", detail: "--batch-size must be at least 1".into() });
        }
        let (bert, task, labels, mem) = load_finetuned(dir, opts.device, opts.precision)?;
        check_tagging(task, opts.tagging(), false)?;
        let tok = BertTokenizer::from_dir(dir, opts.max_length.min(bert.config.max_tokens()))?.fits(bert.config.vocab_size)?;
        Ok(Predictor { bert, task, labels, mem, tok, dir: dir.to_path_buf(), opts })
    }

    /// The task the model was fine-tuned for (read from its config as `eval` reads it).
    pub fn task(&self) -> Task {
        self.task
    }

    /// The model's labels, by output index (`id2label`).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// One JSON object per text, in order — label and probabilities, labels and sigmoids
    /// (multi-label), a score (regression), or (NER) words, tags and entity spans with character
    /// offsets. A memory model streams long texts through its segments (dialogue turns one per
    /// line, `\n` in the text); a pair model takes `HISTORY<TAB>CANDIDATE`.
    pub fn predict(&self, texts: &[String]) -> Result<Vec<Prediction>> {
        if self.opts.device == Device::Cpu {
            crate::util::on_pool(|| self.predict_here(texts))
        } else {
            self.predict_here(texts)
        }
    }

    fn predict_here(&self, texts: &[String]) -> Result<Vec<Prediction>> {
        let Predictor { bert, task, labels, mem, tok, dir, opts } = self;
        let (task, batch_size, memory_norms, tagging) = (*task, opts.batch_size, opts.memory_norms, opts.tagging());
        let mut out = Vec::new();
        // Batches of similar length pad little; the outputs go back to the input order at the end.
        let order = by_length(texts.iter().map(|t| t.len()));
        let mut at = Vec::with_capacity(texts.len());
        for idx in order.chunks(batch_size) {
            let chunk: Vec<String> = idx.iter().map(|&i| texts[i].clone()).collect();
            at.extend_from_slice(idx);
            match task {
                Task::Ner => {
                    let words: Vec<Vec<(String, usize, usize)>> = chunk.iter().map(|t| split_words(t)).collect();
                    let plain: Vec<Vec<String>> = words.iter().map(|w| if w.is_empty() { vec![String::new()] } else { w.iter().map(|x| x.0.clone()).collect() }).collect();
                    let tagged = tag_words(bert, tok, plain, labels, batch_size, tagging)?;
                    for (b, text) in chunk.iter().enumerate() {
                        let tags = if words[b].is_empty() { Vec::new() } else { tagged[b].tags.clone() };
                        let tag_refs: Vec<&str> = tags.iter().map(|s| s.as_str()).collect();
                        let entities: Vec<Entity> = super::metrics::spans(&tag_refs)
                            .into_iter()
                            .map(|(kind, s, e)| {
                                let (start, end) = (words[b][s].1, words[b][e].2);
                                let text: String = text.chars().skip(start).take(end - start).collect();
                                // transformers' grouped entities: the mean of the words' probabilities.
                                let score = round6(tagged[b].scores[s..=e].iter().sum::<f64>() / (e + 1 - s) as f64);
                                Entity { kind, start, end, text, score }
                            })
                            .collect();
                        let tokens: Vec<String> = words[b].iter().map(|w| w.0.clone()).collect();
                        let mut obj = Prediction::new(text, Output::Tags { tokens, tags, entities });
                        obj.truncated = tagged[b].truncated; // words past the window are tagged "O"
                        out.push(obj);
                    }
                }
                Task::Classify | Task::Pair | Task::Multilabel | Task::Regression => {
                    if task == Task::Pair {
                        // A pair model scores a candidate against a history: without the candidate its
                        // output means nothing, so that is an error rather than a silent empty pair.
                        if let Some(i) = chunk.iter().position(|t| !t.contains('\t')) {
                            return Err(Error::Value {
                                op: "predict",
                                detail: format!(
                                    "input \"{}\" has no candidate: this is a pair model ({}); give HISTORY<TAB>CANDIDATE per input",
                                    chunk[i].chars().take(60).collect::<String>(),
                                    dir.display()
                                ),
                            });
                        }
                    }
                    let pairs: Vec<(&str, &str)> = chunk.iter().map(|t| t.split_once('\t').unwrap_or((t.as_str(), ""))).collect();
                    let mut cut = vec![false; chunk.len()];
                    let (logits, norms) = match &mem {
                        Some(cfg) => {
                            let inputs: Vec<(String, Option<String>)> = chunk
                                .iter()
                                .zip(&pairs)
                                .map(|(t, &(a, b))| if task == Task::Pair { (a.replace("\\n", "\n"), Some(b.to_string())) } else { (t.replace("\\n", "\n"), None) })
                                .collect();
                            let out = memory::predict_logits(bert, cfg, tok, &inputs, memory_norms)?;
                            (out.logits.to_f64_vec(), out.memory_norms)
                        }
                        None => {
                            let batch = if task == Task::Pair { tok.encode_pairs(&pairs)? } else { tok.encode(&chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>())? };
                            cut.clone_from(&batch.truncated);
                            (bert.logits(&bert.inference_tape(), &batch, false)?.to_f64_vec(), None)
                        }
                    };
                    for (b, row) in logits.chunks(labels.len()).enumerate() {
                        let output = match task {
                            // Every label whose sigmoid passes 0.5, and each label's sigmoid.
                            Task::Multilabel => {
                                let sig: Vec<f64> = row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
                                let on: Vec<String> = labels.iter().zip(&sig).filter(|(_, &p)| p > 0.5).map(|(l, _)| l.clone()).collect();
                                Output::Labels { labels: on, probs: Probs(labels.iter().zip(&sig).map(|(l, &p)| (l.clone(), round6(p))).collect()) }
                            }
                            // The model's output itself, as transformers' forward returns it.
                            Task::Regression => Output::Score { score: row[0] },
                            _ => {
                                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                                let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
                                let probs = Probs(row.iter().zip(labels.iter()).map(|(x, l)| (l.clone(), round6((x - m).exp() / z))).collect());
                                Output::Label { label: labels[argmax_rows(row, labels.len())[0]].clone(), probs }
                            }
                        };
                        let mut obj = Prediction::new(&chunk[b], output);
                        obj.truncated = cut[b];
                        if let Some(n) = &norms {
                            obj.segments = Some(n[b].len());
                            obj.memory_norms = Some(n[b].iter().map(|x| (x * 1e4).round() / 1e4).collect());
                        }
                        out.push(obj);
                    }
                }
            }
        }
        // `out[k]` answers `texts[at[k]]`: put each answer back at its input's place.
        let mut placed: Vec<Option<Prediction>> = vec![None; texts.len()];
        for (k, v) in at.into_iter().zip(out) {
            placed[k] = Some(v);
        }
        Ok(placed.into_iter().map(|v| v.expect("every input answered once")).collect())
    }
}

/// `engram predict`: [`Predictor::load`] and one [`Predictor::predict`] call.
#[allow(clippy::too_many_arguments)]
pub fn predict_dir(
    dir: &Path,
    texts: &[String],
    max_length: usize,
    batch_size: usize,
    device: Device,
    precision: Precision,
    memory_norms: bool,
    stride: Option<usize>,
) -> Result<Vec<serde_json::Value>> {
    let preds = Predictor::load(dir, PredictOptions { max_length, batch_size, device, precision, memory_norms, stride, aggregation: Aggregation::First })?.predict(texts)?;
    Ok(preds.iter().map(|p| serde_json::to_value(p).expect("predictions serialise")).collect())
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// One answer of [`Predictor::predict`]; it serialises to the JSON line `engram predict` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub text: String,
    #[serde(flatten)]
    pub output: Output,
    /// The input was longer than the window and was cut (NER: words past it are tagged "O").
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Memory models: the segments the input took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<usize>,
    /// Memory models with `memory_norms`: the mean memory state norm after each segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_norms: Option<Vec<f64>>,
}

impl Prediction {
    fn new(text: &str, output: Output) -> Prediction {
        Prediction { text: text.to_string(), output, truncated: false, segments: None, memory_norms: None }
    }
}

/// What a model says of a text, by task (probabilities rounded to 6 decimals).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    /// classify, pair: the most probable label and every label's softmax probability.
    Label { label: String, probs: Probs },
    /// multilabel: the labels whose sigmoid passes 0.5, and every label's sigmoid.
    Labels { labels: Vec<String>, probs: Probs },
    /// regression: the model's output.
    Score { score: f64 },
    /// ner: the words, a BIO tag for each, and the entities they make.
    Tags { tokens: Vec<String>, tags: Vec<String>, entities: Vec<Entity> },
}

/// An entity found by a token-classification model: its type, character span in the text,
/// text, and the mean probability of its words' tags.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub score: f64,
}

/// Label → probability in the model's label order (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct Probs(pub Vec<(String, f64)>);

impl Probs {
    pub fn get(&self, label: &str) -> Option<f64> {
        self.0.iter().find(|(l, _)| l == label).map(|(_, p)| *p)
    }
}

impl Serialize for Probs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (l, p) in &self.0 {
            m.serialize_entry(l, p)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    /// The data order is part of the contract with `scripts/compare_torch.py --matched`, which replays
    /// it in Python (its `engram_order`) and checks the same two vectors.
    #[test]
    fn group_by_length_sorts_megabatches_and_fronts_the_longest() {
        // 40 items of lengths 0..39, batch 2: megabatches of min(40 / 8, 50) = 5 batches = 10 items.
        let lens: Vec<usize> = (0..40).collect();
        let ord = super::order(40, 5, 0);
        let mut want: Vec<Vec<usize>> = ord.chunks(10).map(|c| {
            let mut c = c.to_vec();
            c.sort_by(|a, b| b.cmp(a));
            c
        }).collect();
        let k = want.iter().position(|c| c[0] == 39).unwrap();
        let (x, y) = (want[0][0], want[k][0]);
        (want[0][0], want[k][0]) = (y, x);
        assert_eq!(super::group_by_length(ord.clone(), &lens, 2), want.concat());
        assert_ne!(k, 0, "this seed puts the longest outside the first megabatch, so the swap is tested");
        // Fewer than 4 batches: megabatches of one batch; only the longest moves to the front.
        assert_eq!(super::group_by_length(vec![2, 0, 1], &[5, 9, 7], 1), vec![1, 0, 2]);
    }

    /// A window of a long input labels only the words it owns; the rest are context (-100).
    #[test]
    fn a_window_labels_only_its_scored_words() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let tok = super::BertTokenizer::from_dir(root.join("weights/tiny-bert"), 64).unwrap();
        let words: Vec<String> = "the brown fox is on my email today".split(' ').map(String::from).collect();
        let tags: Vec<String> = ["O", "B-animal", "I-animal", "O", "O", "O", "B-thing", "O"].map(String::from).to_vec();
        let ids: super::HashMap<String, usize> = [("O", 0), ("B-animal", 1), ("I-animal", 2), ("B-thing", 3)].map(|(k, v)| (k.to_string(), v)).into_iter().collect();
        let e = super::Example::Tokens { words, tags, scored: 2..7 };
        let (batch, y) = super::encode_plain(&tok, super::Task::Ner, &[&e], &ids, std::path::Path::new("x"), super::Labelling::Train { all_tokens: false }).unwrap();
        let y = y.ids("test").unwrap();
        let labelled: Vec<(u32, i64)> = batch.word_ids[0].iter().zip(y.iter()).filter(|(_, &l)| l != crate::ops::IGNORE_INDEX).map(|(w, &l)| (w.unwrap(), l)).collect();
        assert_eq!(labelled, vec![(2, 2), (3, 0), (4, 0), (5, 0), (6, 3)]);
    }

    /// `--label-all-tokens`: every sub-token of a scored word is labelled, a B- word's later ones
    /// with its I- tag (or the B- tag itself when the labels have no I-); without it, only the
    /// first; evaluation data labels first sub-tokens only, whatever the flag.
    #[test]
    fn label_all_tokens_labels_later_sub_tokens_inside() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let tok = super::BertTokenizer::from_dir(root.join("weights/tiny-bert"), 64).unwrap();
        let words: Vec<String> = "the snuffleupagus grumbled at xylophones today".split(' ').map(String::from).collect();
        let tags: Vec<String> = ["O", "B-animal", "I-animal", "O", "B-thing", "O"].map(String::from).to_vec();
        let ids: super::HashMap<String, usize> = [("O", 0), ("B-animal", 1), ("I-animal", 2), ("B-thing", 3)].map(|(k, v)| (k.to_string(), v)).into_iter().collect();
        let e = super::Example::Tokens { words, tags, scored: 0..6 };
        let labelled = |how| {
            let (batch, y) = super::encode_plain(&tok, super::Task::Ner, &[&e], &ids, std::path::Path::new("x"), how).unwrap();
            let y = y.ids("test").unwrap();
            batch.word_ids[0].iter().zip(y.iter()).filter(|(_, &l)| l != crate::ops::IGNORE_INDEX).map(|(w, &l)| (w.unwrap(), l)).collect::<Vec<(u32, i64)>>()
        };
        let all = labelled(super::Labelling::Train { all_tokens: true });
        let count = |w: u32| all.iter().filter(|x| x.0 == w).count();
        assert!(count(1) > 1 && count(2) > 1 && count(4) > 1, "the test needs words cut into sub-tokens: {all:?}");
        let mut want = Vec::new();
        for (w, first, later) in [(0, 0, 0), (1, 1, 2), (2, 2, 2), (3, 0, 0), (4, 3, 3), (5, 0, 0)] {
            want.push((w, first));
            want.extend(std::iter::repeat_n((w, later), count(w) - 1));
        }
        assert_eq!(all, want);
        let first_only: Vec<(u32, i64)> = [(0, 0), (1, 1), (2, 2), (3, 0), (4, 3), (5, 0)].to_vec();
        assert_eq!(labelled(super::Labelling::Train { all_tokens: false }), first_only);
        assert_eq!(labelled(super::Labelling::Eval), first_only);
    }

    #[test]
    fn early_stopping_threshold_counts_only_larger_gains() {
        use super::compare_metric;
        assert_eq!(compare_metric(None, 0.5, false, 0.1), (true, true));
        assert_eq!(compare_metric(Some(0.5), 0.55, false, 0.1), (true, false), "a gain of 0.05 keeps the model, not the patience");
        assert_eq!(compare_metric(Some(0.5), 0.65, false, 0.1), (true, true));
        assert_eq!(compare_metric(Some(0.5), 0.5, false, 0.0), (false, false), "equal is no gain");
        assert_eq!(compare_metric(Some(0.5), 0.45, false, 0.0), (false, false));
        // Lower is better (loss, mse): the gain is the fall.
        assert_eq!(compare_metric(Some(0.5), 0.45, true, 0.1), (true, false));
        assert_eq!(compare_metric(Some(0.5), 0.3, true, 0.1), (true, true));
        assert_eq!(compare_metric(Some(0.5), 0.7, true, 0.1), (false, false));
    }

    #[test]
    fn epoch_order_is_pinned() {
        assert_eq!(super::order(10, 1, 0), vec![9, 5, 0, 3, 1, 2, 8, 6, 4, 7]);
        assert_eq!(super::order(10, 7, 3), vec![4, 3, 1, 2, 8, 7, 5, 9, 0, 6]);
    }
}

//! The `engram` command line: `inspect` and `embed` real BERT checkpoints, and the engine
//! `selfcheck` (the default). `finetune`, `eval` and `predict` arrive with the trainer.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use engram::data::BertTokenizer;
use engram::models::bert::weights::describe_safetensors;
use engram::models::bert::{sentence_config, Bert, Head, Precision};
use engram::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig, Schedule, ScheduleKind};
use engram::util::Rng;
use engram::{ops, Device, Error, Result, Tape, Tensor};

#[derive(Parser)]
#[command(name = "engram", version, about = "A from-scratch engine for running and fine-tuning BERT models")]
struct Cli {
    /// CPU threads for the kernels (default: every core, or RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeviceArg {
    Cpu,
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TaskArg {
    /// One label per text (or text pair): softmax, cross-entropy.
    Classify,
    /// BIO tags per word (NER, token-level intents).
    Ner,
    /// Dialogue history + candidate response (text, text_pair) → label.
    Pair,
    /// Any number of labels per text: a sigmoid per label, binary cross-entropy.
    Multilabel,
    /// A real-valued score per text or pair: mean squared error.
    Regression,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OptArg {
    Adamw,
    Sgd,
}

/// Stored weight dtypes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    F16,
}

/// NER: how a word's tag comes from its sub-tokens (transformers' `aggregation_strategy`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AggArg {
    /// The first sub-token's tag.
    First,
    /// The tag with the highest probability averaged over the word's sub-tokens.
    Average,
    /// The tag of the sub-token with the most confident prediction.
    Max,
}

impl From<AggArg> for engram::train::Aggregation {
    fn from(a: AggArg) -> Self {
        use engram::train::Aggregation;
        match a {
            AggArg::First => Aggregation::First,
            AggArg::Average => Aggregation::Average,
            AggArg::Max => Aggregation::Max,
        }
    }
}

/// transformers' `lr_scheduler_type` names (with `-` or `_`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SchedArg {
    /// Linear decay to 0 (Trainer's default).
    Linear,
    /// Half a cosine down to 0.
    Cosine,
    /// Constant; no warmup.
    Constant,
    /// Constant after the warmup.
    #[value(alias = "constant_with_warmup")]
    ConstantWithWarmup,
}

#[derive(clap::Args)]
struct FinetuneCli {
    /// HF model directory to start from (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum)]
    task: TaskArg,
    /// Training data: CSV/TSV/JSONL (classify, pair, multilabel, regression) or CoNLL/JSONL (ner).
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    dev: PathBuf,
    #[arg(long)]
    test: Option<PathBuf>,
    /// Output HF model directory (best checkpoint), with metrics.json, training.svg, checkpoint/.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Examples per forward pass when evaluating dev and test (per_device_eval_batch_size).
    #[arg(long, default_value_t = engram::train::trainer::DEFAULT_EVAL_BATCH, value_name = "N")]
    eval_batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch-size × this).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Warmup as a share of all optimizer steps (ceil), linear from 0.
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    /// Warmup in optimizer steps (wins over --warmup-ratio, as transformers' warmup_steps).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// The learning-rate schedule after warmup (transformers' lr_scheduler_type).
    #[arg(long, value_enum, default_value = "linear")]
    lr_scheduler: SchedArg,
    /// Train for N optimizer steps (wins over --epochs, as transformers' max_steps): the last
    /// epoch is cut short, evaluated and checkpointed; the schedule spans the N steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// AdamW β₁.
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    /// AdamW β₂.
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    /// AdamW ε.
    #[arg(long, default_value_t = 1e-8)]
    adam_epsilon: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Train only the new head (transfer with a frozen encoder).
    #[arg(long)]
    freeze_backbone: bool,
    /// Early stopping: epochs without improvement of --metric before stopping.
    #[arg(long)]
    patience: Option<usize>,
    /// Early stopping: an evaluation counts as an improvement only when it beats the best by
    /// more than this (the best model is still kept on any gain).
    #[arg(long, default_value_t = 0.0, value_name = "DELTA")]
    early_stopping_threshold: f64,
    /// Dev metric for early stopping and the best checkpoint: accuracy | macro_f1 (classify,
    /// pair), entity_f1 (ner), micro_f1 (multilabel), pearson | spearman | mse (regression), loss
    /// (default: entity_f1 for ner, micro_f1 for multilabel, pearson for regression, else accuracy;
    /// an "eval_" prefix, as in metric_for_best_model, is accepted).
    #[arg(long)]
    metric: Option<String>,
    /// Multilabel: the separator of the labels in one CSV/TSV field or JSON string (a JSON array
    /// needs none).
    #[arg(long, default_value_t = ',')]
    label_sep: char,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Use only the first N training examples.
    #[arg(long)]
    max_train_examples: Option<usize>,
    /// Use only the first N dev/test examples.
    #[arg(long)]
    max_eval_examples: Option<usize>,
    /// Continue from OUT/checkpoint exactly where it stopped.
    #[arg(long)]
    resume: bool,
    /// Also checkpoint every N optimizer steps.
    #[arg(long)]
    save_steps: Option<u64>,
    /// Evaluate on dev every N optimizer steps (and after the last) instead of every epoch;
    /// --patience then counts evaluations.
    #[arg(long, value_name = "N")]
    eval_steps: Option<u64>,
    /// Batch training examples of similar length together (less padding, faster epochs), as
    /// transformers' group_by_length does.
    #[arg(long)]
    group_by_length: bool,
    /// Label smoothing of the cross-entropy loss (classify, pair, ner), as transformers'
    /// label_smoothing_factor: the target gets 1 − ε + ε/V, every class ε/V.
    #[arg(long, default_value_t = 0.0, value_name = "EPS")]
    label_smoothing: f64,
    /// Weigh each class in the cross-entropy loss (classify, pair, ner) — for imbalanced labels:
    /// `balanced` (n / (k · count), scikit-learn's) or LABEL=W,LABEL=W,... (others weigh 1).
    /// Multilabel: each label's positive weight in the BCE (pos_weight; balanced = negatives /
    /// positives). The dev and test loss are weighted the same way.
    #[arg(long, value_name = "balanced|LABEL=W,...")]
    class_weights: Option<engram::train::ClassWeights>,
    /// Names of integer labels in id order (an HF datasets export's ClassLabel names, e.g.
    /// features["ner_tags"].feature.names): id i reads as the i-th name, and the names become
    /// the model's labels in that order.
    #[arg(long, value_name = "NAME,NAME,...", value_delimiter = ',')]
    label_names: Option<Vec<String>>,
    /// Stop after N optimizer steps with a checkpoint (to test --resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<u64>,
    /// No progress bars or per-epoch reports.
    #[arg(long)]
    quiet: bool,
    /// Cut over-long inputs from the left, keeping their end (transformers' truncation_side="left").
    #[arg(long)]
    truncate_left: bool,
    /// NER: train and evaluate on sentences longer than --max-length as overlapping windows
    /// sharing up to N tokens (transformers' stride), each word labelled once, by the window
    /// where it has the most context; without it they are truncated.
    #[arg(long, value_name = "N")]
    stride: Option<usize>,
    /// NER: label every sub-token of a word, not only the first (later ones of a B-X word get
    /// I-X; run_ner's --label_all_tokens). Pair it with --aggregation average or max.
    #[arg(long)]
    label_all_tokens: bool,
    /// NER: how a word's tag comes from its sub-tokens' predictions, in the dev/test scores.
    #[arg(long, value_enum, default_value = "first")]
    aggregation: AggArg,
    /// bf16 autocast (transformers' --bf16): linear layers' GEMMs, forward and backward, in
    /// bf16 with f32 sums; weights, gradients and optimizer state stay f32. CPU and CUDA.
    #[arg(long)]
    bf16: bool,
    /// Gradient checkpointing: each encoder layer keeps only its input and runs again in
    /// backward: a MiniLM step at batch 32 holds 336 MB instead of 1090, at ~1.15x its time;
    /// the same weights (bit for bit unless weights are reused across segments: then to rounding).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Time every op of the training steps (forward and backward) and what runs around them;
    /// the table goes to OUT/profile.txt (and stderr). On CUDA set ENGRAM_CUDA_SYNC=1 with it.
    /// With --gradient-checkpointing the ops inside each layer are timed by name too; their
    /// rerun in backward counts as forward calls (twice the plain count), as torch.profiler shows it.
    #[arg(long)]
    profile: bool,
    /// Context memory: M recurrent memory tokens carried across segments of long inputs (0 with
    /// --segment-len: the chunk-and-average baseline). A plain BERT gets memory with this flag.
    #[arg(long, help_heading = "Context memory")]
    memory_tokens: Option<usize>,
    /// Text tokens per segment (default: max length − memory tokens − 2).
    #[arg(long, help_heading = "Context memory")]
    segment_len: Option<usize>,
    /// Backpropagate through the last K segments only (default: all).
    #[arg(long, help_heading = "Context memory")]
    bptt: Option<usize>,
    /// Longest input, in segments; longer inputs are an error.
    #[arg(long, default_value_t = 64, help_heading = "Context memory")]
    max_segments: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fine-tune an HF BERT checkpoint; writes an HF model directory. A flag given twice takes
    /// its last value (so a wrapper's defaults can be overridden by appending).
    #[command(args_override_self = true)]
    Finetune(Box<FinetuneCli>),
    /// Rewrite a model directory with its weights stored in another dtype (bf16 or f16: half the
    /// file) — as `model.to(dtype).save_pretrained()`; config and tokenizer files come along.
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum)]
        dtype: DtypeArg,
    },
    /// Evaluate a fine-tuned model directory on a labelled file (report on stderr, JSON on stdout).
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 128)]
        max_length: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// Run the encoder's linear layers in int8 (dynamic quantization; CPU).
        #[arg(long)]
        int8: bool,
        /// Run every linear layer's GEMM in bf16 with f32 sums (bf16 autocast).
        #[arg(long, conflicts_with = "int8")]
        bf16: bool,
        /// Multilabel models: the separator of the labels in one field.
        #[arg(long, default_value_t = ',')]
        label_sep: char,
        /// Examples per forward pass.
        #[arg(long, default_value_t = engram::train::trainer::DEFAULT_EVAL_BATCH)]
        batch_size: usize,
        /// Also write each example's input, gold answer and prediction to FILE (JSONL, in the
        /// data's order; the score is the predicted label's probability).
        #[arg(long, value_name = "FILE")]
        predictions: Option<PathBuf>,
        /// NER: read inputs longer than --max-length in overlapping windows sharing up to N
        /// tokens (transformers' stride), each word tagged by the window where it has the most
        /// context; without it they are truncated.
        #[arg(long, value_name = "N")]
        stride: Option<usize>,
        /// NER: how a word's tag comes from its sub-tokens' predictions (transformers'
        /// aggregation_strategy: first, average or max).
        #[arg(long, value_enum, default_value = "first")]
        aggregation: AggArg,
    },
    /// Predict with a fine-tuned model: JSONL (label and probabilities; tags and entity spans for NER).
    Predict {
        #[arg(long)]
        model: PathBuf,
        /// Read texts from FILE: .jsonl/.csv/.tsv in the training formats ("text", optional
        /// "text_pair"; NER's "tokens"), else one per line ("-": stdin, answered a batch at a time as lines arrive; for pair models
        /// history<TAB>candidate).
        #[arg(long, value_name = "FILE", conflicts_with = "texts")]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        max_length: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// Run the encoder's linear layers in int8 (dynamic quantization; CPU).
        #[arg(long)]
        int8: bool,
        /// Run every linear layer's GEMM in bf16 with f32 sums (bf16 autocast).
        #[arg(long, conflicts_with = "int8")]
        bf16: bool,
        /// Memory models: print the memory state norm after each segment.
        #[arg(long)]
        memory_norms: bool,
        /// NER: read inputs longer than --max-length in overlapping windows sharing up to N
        /// tokens (transformers' stride), each word tagged by the window where it has the most
        /// context; without it they are truncated.
        #[arg(long, value_name = "N")]
        stride: Option<usize>,
        /// NER: how a word's tag comes from its sub-tokens' predictions (transformers'
        /// aggregation_strategy: first, average or max).
        #[arg(long, value_enum, default_value = "first")]
        aggregation: AggArg,
        texts: Vec<String>,
    },
    /// Write the long-range recall benchmark (deterministic): train/dev/test JSONL of documents
    /// whose label needs a fact from the first segment and a question from the last.
    RecallData {
        #[arg(long)]
        out: PathBuf,
        /// Document length in words (≈ tokens).
        #[arg(long, default_value_t = 512)]
        words: usize,
        /// Dialogues (history one turn per line + candidate response) instead of documents.
        #[arg(long)]
        dialogue: bool,
        #[arg(long, default_value_t = 2000)]
        train: usize,
        #[arg(long, default_value_t = 500)]
        dev: usize,
        #[arg(long, default_value_t = 500)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a tiny encoder on a synthetic task and show the loss falling (the default).
    Selfcheck {
        #[arg(long, default_value_t = 60)]
        steps: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
    },
    /// Describe an HF model directory: architecture, parameters, dtypes, tokenizer.
    Inspect {
        /// Directory with config.json, model.safetensors, tokenizer.json.
        model: PathBuf,
    },
    /// Sentence embeddings as JSONL on stdout, one object per input text, in order.
    Embed {
        #[arg(long)]
        model: PathBuf,
        /// L2-normalise the embeddings.
        #[arg(long)]
        normalize: bool,
        /// Read texts from FILE: .jsonl/.csv/.tsv with a "text" field or column, else one per
        /// line ("-": stdin, answered a batch at a time as lines arrive).
        #[arg(long, value_name = "FILE", conflicts_with = "texts")]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Truncation length in tokens (default: the model's max_seq_length, else 512).
        #[arg(long)]
        max_length: Option<usize>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// Run the encoder's linear layers in int8 (dynamic quantization; CPU).
        #[arg(long)]
        int8: bool,
        /// Run every linear layer's GEMM in bf16 with f32 sums (bf16 autocast).
        #[arg(long, conflicts_with = "int8")]
        bf16: bool,
        /// Texts to embed.
        texts: Vec<String>,
    },
}

fn main() -> ExitCode {
    engram::util::tune_allocator();
    engram::util::default_sigpipe();
    let cli = Cli::parse();
    if let Err(e) = thread_pool(cli.threads) {
        eprintln!("engram: error: {e}");
        return ExitCode::FAILURE;
    }
    let res = match cli.cmd.unwrap_or(Cmd::Selfcheck { steps: 60, seed: 0, device: DeviceArg::Cpu }) {
        Cmd::Selfcheck { steps, seed, device } => selfcheck(steps, seed, device.into()).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Cmd::Inspect { model } => inspect(&model).map(|_| ExitCode::SUCCESS),
        Cmd::Convert { model, out, dtype } => {
            use engram::models::bert::weights::{convert_checkpoint, StoreDtype};
            let d = match dtype {
                DtypeArg::F32 => StoreDtype::F32,
                DtypeArg::Bf16 => StoreDtype::Bf16,
                DtypeArg::F16 => StoreDtype::F16,
            };
            convert_checkpoint(&model, &out, d).map(|(before, after)| {
                eprintln!("wrote {} ({}): model.safetensors {:.1} MB -> {:.1} MB", out.display(), d.torch_name(), before as f64 / 1e6, after as f64 / 1e6);
                ExitCode::SUCCESS
            })
        }
        Cmd::RecallData { out, words, dialogue, train, dev, test, seed } => {
            engram::memory::recall::write(&out, dialogue, words, [train, dev, test], seed).map(|_| {
                eprintln!("wrote {} recall {} of ~{words} words to {}", train + dev + test, if dialogue { "dialogues" } else { "documents" }, out.display());
                ExitCode::SUCCESS
            })
        }
        Cmd::Finetune(f) => finetune(*f).map(|_| ExitCode::SUCCESS),
        Cmd::Eval { model, data, max_length, device, int8, bf16, label_sep, batch_size, predictions, stride, aggregation } => engram::train::evaluate_dir(&model, &data, &engram::train::EvalOptions { max_length, batch_size, device: device.into(), precision: precision(int8, bf16), label_sep, tagging: engram::train::TagOptions { stride, aggregation: aggregation.into() }, predictions }).map(|(text, json)| {
            eprint!("{text}");
            println!("{}", serde_json::to_string_pretty(&json).expect("metrics serialise"));
            ExitCode::SUCCESS
        }),
        Cmd::Predict { model, input, max_length, batch_size, device, int8, bf16, memory_norms, stride, aggregation, texts } => (|| {
            use engram::train::{Output, PredictOptions, Predictor};
            let opts = PredictOptions { max_length, batch_size, device: device.into(), precision: precision(int8, bf16), memory_norms, stride, aggregation: aggregation.into() };
            let model = Predictor::load(&model, opts)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let (mut cut, mut ner) = (0usize, false);
            let n = for_each_chunk(input.as_deref(), texts, batch_size, usize::MAX, |chunk| {
                for p in model.predict(chunk)? {
                    cut += p.truncated as usize;
                    ner |= matches!(p.output, Output::Tags { .. });
                    writeln!(out, "{}", serde_json::to_string(&p).expect("predictions serialise")).map_err(|e| Error::File { path: "stdout".into(), detail: e.to_string() })?;
                }
                out.flush().map_err(|e| Error::File { path: "stdout".into(), detail: e.to_string() })
            })?;
            if cut > 0 {
                eprintln!(
                    "engram predict: {cut} of {n} inputs were longer than the window and were truncated (\"truncated\": true; {})",
                    if ner { "--stride N tags every word through overlapping windows" } else { "a memory model reads them whole" }
                );
            }
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::Embed { model, normalize, input, batch_size, max_length, device, int8, bf16, texts } => {
            embed(&model, normalize, input.as_deref(), texts, batch_size, max_length, device.into(), precision(int8, bf16)).map(|_| ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("engram: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The kernels' thread pool, before anything runs on it: `threads` workers (else rayon's
/// default: RAYON_NUM_THREADS, else one per core), each with the main thread's 8 MiB of stack,
/// since inference runs on the workers (`util::on_pool`).
fn thread_pool(threads: Option<usize>) -> Result<()> {
    if threads == Some(0) {
        return Err(Error::Value { op: "--threads", detail: "must be at least 1".into() });
    }
    let mut b = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if let Some(n) = threads {
        b = b.num_threads(n);
    }
    b.build_global().map_err(|e| Error::Value { op: "--threads", detail: e.to_string() })
}

fn finetune(f: FinetuneCli) -> Result<()> {
    use engram::train::{FinetuneArgs, OptimizerKind, Task};
    let task = match f.task {
        TaskArg::Classify => Task::Classify,
        TaskArg::Ner => Task::Ner,
        TaskArg::Pair => Task::Pair,
        TaskArg::Multilabel => Task::Multilabel,
        TaskArg::Regression => Task::Regression,
    };
    let mut a = FinetuneArgs::new(f.model, task, f.train, f.dev, f.out);
    a.test = f.test;
    a.lr = f.lr;
    a.epochs = f.epochs;
    a.batch_size = f.batch_size;
    a.grad_accum = f.grad_accum;
    a.max_length = f.max_length;
    a.warmup_ratio = f.warmup_ratio;
    a.warmup_steps = f.warmup_steps;
    a.max_steps = f.max_steps;
    a.lr_scheduler = match f.lr_scheduler {
        SchedArg::Linear => ScheduleKind::Linear,
        SchedArg::Cosine => ScheduleKind::Cosine,
        SchedArg::Constant => ScheduleKind::Constant,
        SchedArg::ConstantWithWarmup => ScheduleKind::ConstantWithWarmup,
    };
    a.adam = (f.adam_beta1, f.adam_beta2, f.adam_epsilon);
    a.weight_decay = f.weight_decay;
    a.max_grad_norm = f.max_grad_norm;
    a.seed = f.seed;
    a.optimizer = if f.optimizer == OptArg::Sgd { OptimizerKind::Sgd } else { OptimizerKind::Adamw };
    a.momentum = f.momentum;
    a.freeze_backbone = f.freeze_backbone;
    a.patience = f.patience;
    a.early_stopping_threshold = f.early_stopping_threshold;
    if let Some(m) = f.metric {
        a.metric = m;
    }
    a.device = f.device.into();
    a.max_train_examples = f.max_train_examples;
    a.max_eval_examples = f.max_eval_examples;
    a.resume = f.resume;
    a.save_steps = f.save_steps;
    a.eval_steps = f.eval_steps;
    a.group_by_length = f.group_by_length;
    a.label_smoothing = f.label_smoothing;
    a.class_weights = f.class_weights;
    a.label_names = f.label_names;
    a.stop_after_steps = f.stop_after_steps;
    a.progress = !f.quiet;
    a.truncate_left = f.truncate_left;
    a.stride = f.stride;
    a.label_all_tokens = f.label_all_tokens;
    a.aggregation = f.aggregation.into();
    a.bf16 = f.bf16;
    a.gradient_checkpointing = f.gradient_checkpointing;
    a.label_sep = f.label_sep;
    a.eval_batch_size = f.eval_batch_size;
    a.profile = f.profile;
    if f.memory_tokens.is_some() || f.segment_len.is_some() {
        use engram::memory::MemoryConfig;
        let m = f.memory_tokens.unwrap_or(0);
        let seg = match f.segment_len {
            Some(s) => s,
            None => f.max_length.checked_sub(m + 2).filter(|&s| s > 0).ok_or_else(|| Error::Value {
                op: "finetune",
                detail: format!("--max-length {} leaves no room for {m} memory tokens and [CLS]/[SEP]", f.max_length),
            })?,
        };
        let mut cfg = if m > 0 { MemoryConfig::memory(m, seg, f.bptt) } else { MemoryConfig::chunk_mean(seg) };
        cfg.max_segments = f.max_segments;
        a.memory = Some(cfg);
    } else if f.bptt.is_some() {
        return Err(Error::Value { op: "finetune", detail: "--bptt needs --memory-tokens".into() });
    }
    let eval_steps = a.eval_steps;
    let s = engram::train::finetune(&a)?;
    if s.interrupted {
        eprintln!("\nstopped after step {}; checkpoint in {}; continue with --resume", s.global_step, s.out.join("checkpoint").display());
        println!("{}", serde_json::to_string(&s).expect("summary serialises"));
        return Ok(());
    }
    eprintln!(
        "\ndone: best dev {} = {:.4} at {}epoch {} of {}{}; {:.1} examples/s, {:.0} tokens/s; model in {}",
        s.metric,
        s.best_metric,
        if eval_steps.is_some() { format!("step {}, ", s.best_step) } else { String::new() },
        s.best_epoch,
        s.epochs_run,
        if s.stopped_early { " (stopped early)" } else { "" },
        s.train_examples_per_s,
        s.train_tokens_per_s,
        s.out.display()
    );
    println!("{}", serde_json::to_string(&s).expect("summary serialises"));
    Ok(())
}

/// Hand the input texts to `f` a chunk at a time, in order: from stdin (`--input -`) as lines
/// arrive, `batch` lines a chunk, so a pipe gets each batch's answers without waiting for the end
/// of its input (`--batch-size 1`: line by line); from a file or the arguments, `window` texts a
/// chunk. Returns how many texts there were.
fn for_each_chunk(input: Option<&Path>, texts: Vec<String>, batch: usize, window: usize, mut f: impl FnMut(&[String]) -> Result<()>) -> Result<usize> {
    let none = || Error::Value { op: "engram", detail: "no texts: give TEXT arguments or --input FILE".into() };
    if input == Some(Path::new("-")) {
        let (mut chunk, mut n) = (Vec::with_capacity(batch), 0);
        for line in std::io::stdin().lock().lines() {
            chunk.push(line.map_err(|e| Error::File { path: "stdin".into(), detail: e.to_string() })?);
            if chunk.len() >= batch.max(1) {
                f(&chunk)?;
                n += chunk.len();
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            f(&chunk)?;
            n += chunk.len();
        }
        return if n == 0 { Err(none()) } else { Ok(n) };
    }
    let texts = match input {
        Some(p) => engram::train::data::load_texts(p)?,
        None => texts,
    };
    if texts.is_empty() {
        return Err(none());
    }
    for w in texts.chunks(window.max(1)) {
        f(w)?;
    }
    Ok(texts.len())
}

fn max_seq_length(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?.get("max_seq_length")?.as_u64().map(|v| v as usize)
}

fn inspect(dir: &Path) -> Result<()> {
    let (bert, report) = Bert::load(dir, Head::None, 0)?;
    let c = &bert.config;
    let stored = describe_safetensors(dir.join("model.safetensors"))?;
    let mut dtypes: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (_, dt, shape) in &stored {
        let e = dtypes.entry(dt.as_str()).or_default();
        e.0 += 1;
        e.1 += shape.iter().product::<usize>();
    }
    println!("model        {}", dir.display());
    println!("architecture {}", if c.architectures.is_empty() { "BertModel".into() } else { c.architectures.join(", ") });
    println!(
        "encoder      {} layers, hidden {}, {} heads × {}, intermediate {}, {:?}, layer_norm_eps {:e}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.head_size(),
        c.intermediate_size,
        c.hidden_act,
        c.layer_norm_eps
    );
    let distil = c.family == engram::models::bert::Family::DistilBert;
    let types = if distil { "none (DistilBERT)".to_string() } else { c.type_vocab_size.to_string() };
    let positions = if c.max_tokens() == c.max_position_embeddings { c.max_position_embeddings.to_string() } else { format!("{} ({} rows from pad_token_id + 1)", c.max_tokens(), c.max_position_embeddings) };
    let width = if c.embedding_size == c.hidden_size { String::new() } else { format!(", {} wide (projected to {})", c.embedding_size, c.hidden_size) };
    println!("embeddings   vocab {}, positions {positions}, token types {types}, pad id {}{width}", c.vocab_size, c.pad_token_id);
    use engram::models::bert::Family;
    let what = if matches!(c.family, Family::Bert | Family::Albert) { "in the backbone + pooler" } else { "in the backbone (the heads' tensors below)" };
    if c.family == Family::Albert {
        println!("sharing      one layer's weights used by all {} layers (ALBERT)", c.num_hidden_layers);
    }
    println!("parameters   {} ({:.1} M) {what}", bert.num_parameters(), bert.num_parameters() as f64 / 1e6);
    for (dt, (n, numel)) in &dtypes {
        println!("stored       {n} tensors as {dt} ({numel} values)");
    }
    if !c.id2label.is_empty() {
        println!("labels       {}", c.id2label.join(", "));
    }
    if !report.unexpected.is_empty() {
        println!("unused       {} stored tensors: {}", report.unexpected.len(), report.unexpected.join(", "));
    }
    let has_slow = dir.join("vocab.txt").is_file() || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file());
    if dir.join("tokenizer.json").is_file() || has_slow {
        let max_len = max_seq_length(dir).unwrap_or(c.max_tokens());
        let tok = BertTokenizer::from_dir(dir, max_len)?.fits(c.vocab_size)?;
        let ids: Vec<String> = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>"]
            .iter()
            .filter_map(|t| tok.token_to_id(t).map(|id| format!("{t}={id}")))
            .collect();
        let from = if dir.join("tokenizer.json").is_file() { "" } else { " (built from the slow tokenizer's vocabulary)" };
        println!("tokenizer    vocab {}, max length {max_len}, special {}{from}", tok.vocab_size(), ids.join(" "));
    } else {
        println!("tokenizer    none (no tokenizer.json, vocab.txt or vocab.json + merges.txt)");
    }
    let (pooling, normalize) = sentence_config(dir)?;
    println!("sentence     {:?} pooling{}", pooling, if normalize { ", L2-normalised" } else { "" });
    Ok(())
}

fn precision(int8: bool, bf16: bool) -> Precision {
    match (int8, bf16) {
        (true, _) => Precision::Int8,
        (false, true) => Precision::Bf16,
        (false, false) => Precision::F32,
    }
}

/// Batches per window within which `embed` groups texts by length.
const EMBED_WINDOW: usize = 64;

#[allow(clippy::too_many_arguments)]
fn embed(
    dir: &Path,
    normalize: bool,
    input: Option<&Path>,
    texts: Vec<String>,
    batch_size: usize,
    max_length: Option<usize>,
    device: Device,
    precision: Precision,
) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::Value { op: "embed", detail: "--batch-size must be at least 1".into() });
    }
    if precision == Precision::Int8 && device != Device::Cpu {
        return Err(Error::Device(format!("--{} runs on the CPU (drop --device cuda)", engram::train::precision_flag(precision))));
    }
    let (mut bert, _) = Bert::load_with(dir, Head::None, 0, precision)?;
    if device != Device::Cpu {
        bert.to_device(device)?;
    }
    let max_len = max_length.or_else(|| max_seq_length(dir)).unwrap_or(512).min(bert.config.max_tokens());
    let tok = BertTokenizer::from_dir(dir, max_len)?.fits(bert.config.vocab_size)?;
    let (pooling, _) = sentence_config(dir)?;
    let start = Instant::now();
    let (mut tokens, mut truncated) = (0usize, 0usize);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Texts of similar length are batched together (less padding; a row's embedding depends on
    // its batch only through float rounding, ~1e-6), within windows of EMBED_WINDOW batches so the output still streams
    // in input order with bounded memory (stdin: a batch at a time, as lines arrive).
    let n = for_each_chunk(input, texts, batch_size, batch_size.saturating_mul(EMBED_WINDOW), |window| {
        let mut order: Vec<usize> = (0..window.len()).collect();
        order.sort_by_key(|&i| window[i].len());
        let mut embs: Vec<Vec<f32>> = vec![Vec::new(); window.len()];
        for idx in order.chunks(batch_size) {
            let refs: Vec<&str> = idx.iter().map(|&i| window[i].as_str()).collect();
            let batch = tok.encode(&refs)?;
            tokens += batch.tokens();
            truncated += batch.truncated.iter().filter(|&&t| t).count();
            for (&i, e) in idx.iter().zip(bert.embed(&batch, pooling, normalize)?) {
                embs[i] = e;
            }
        }
        for (text, e) in window.iter().zip(&embs) {
            // Written by hand to keep the key order (text first) and f32's shortest form.
            let line = format!("{{\"text\":{},\"embedding\":{}}}", serde_json::Value::from(text.as_str()), serde_json::to_string(e).expect("floats serialise"));
            writeln!(out, "{line}").map_err(|e| Error::File { path: "stdout".into(), detail: e.to_string() })?;
        }
        out.flush().map_err(|e| Error::File { path: "stdout".into(), detail: e.to_string() })
    })?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "engram embed: {} texts, {tokens} tokens in {secs:.2} s ({:.1} texts/s, {:.0} tokens/s) on {device:?}{}",
        n,
        n as f64 / secs,
        tokens as f64 / secs,
        if truncated > 0 { format!("; {truncated} text(s) truncated to {max_len} tokens") } else { String::new() }
    );
    Ok(())
}

/// Task: sequences of random tokens 2..V; label 1 when token 1 ("the fact") occurs anywhere,
/// which needs attention to find. Sequences have random lengths with key padding.
fn batch(rng: &mut Rng, b: usize, t: usize, v: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let (mut ids, mut mask, mut labels) = (vec![0i64; b * t], vec![0i64; b * t], vec![0i64; b]);
    for i in 0..b {
        let len = 3 + rng.below(t as u64 - 2) as usize;
        let positive = rng.below(2) == 1;
        for j in 0..len {
            ids[i * t + j] = 2 + rng.below(v - 2) as i64;
            mask[i * t + j] = 1;
        }
        if positive {
            ids[i * t + rng.below(len as u64) as usize] = 1;
        }
        labels[i] = positive as i64;
    }
    Ok((Tensor::from_ids(ids, &[b, t])?, Tensor::from_ids(mask, &[b, t])?, Tensor::from_ids(labels, &[b])?))
}

fn selfcheck(steps: u64, seed: u64, device: Device) -> Result<bool> {
    let (v, t, c, nh, b) = (16usize, 12usize, 32usize, 4usize, 32usize);
    let mut rng = Rng::new(seed);
    let mut init = |shape: &[usize], std: f64| -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| (x * std) as f32).collect::<Vec<f32>>(), shape)
    };
    let ones = |n: usize| Tensor::from_vec(vec![1f32; n], &[n]);
    let zeros = |n: usize| Tensor::from_vec(vec![0f32; n], &[n]);
    let mut named: Vec<(String, Tensor)> = vec![
        ("embeddings.word_embeddings.weight".into(), init(&[v, c], 0.5)?),
        ("embeddings.position_embeddings.weight".into(), init(&[t, c], 0.5)?),
        ("embeddings.LayerNorm.weight".into(), ones(c)?),
        ("embeddings.LayerNorm.bias".into(), zeros(c)?),
    ];
    for n in ["query", "key", "value", "output", "intermediate", "ffn_output"] {
        let (o, i) = match n {
            "intermediate" => (4 * c, c),
            "ffn_output" => (c, 4 * c),
            _ => (c, c),
        };
        named.push((format!("{n}.weight"), init(&[o, i], 1.0 / (i as f64).sqrt())?));
        named.push((format!("{n}.bias"), zeros(o)?));
    }
    for n in ["attention.LayerNorm", "output.LayerNorm"] {
        named.push((format!("{n}.weight"), ones(c)?));
        named.push((format!("{n}.bias"), zeros(c)?));
    }
    named.push(("classifier.weight".into(), init(&[2, c], 0.1)?));
    named.push(("classifier.bias".into(), zeros(2)?));
    for (_, p) in named.iter_mut() {
        *p = p.to_device(device)?.requires_grad();
    }
    let n_params: usize = named.iter().map(|(_, p)| p.numel()).sum();
    println!("engram {} — engine self-check ({device:?}, f32)", env!("CARGO_PKG_VERSION"));
    println!("  a one-layer encoder ({n_params} parameters) learns \"does token 1 occur?\" over padded sequences");

    let sched = Schedule::linear(3e-3, steps / 10, steps);
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut data_rng = Rng::new(seed ^ 0x5eed);
    let (eval_ids, eval_mask, eval_labels) = batch(&mut Rng::new(seed ^ 0xe7a1), 256, t, v as u64)?;
    let (eval_ids, eval_mask) = (eval_ids.to_device(device)?, eval_mask.to_device(device)?);
    let start = Instant::now();
    let acc0 = accuracy(&named, &eval_ids, &eval_mask, &eval_labels, nh)?;
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for step in 0..steps {
        let (ids, mask, labels) = batch(&mut data_rng, b, t, v as u64)?;
        let (ids, mask, labels) = (ids.to_device(device)?, mask.to_device(device)?, labels.to_device(device)?);
        let tape = Tape::training(seed.wrapping_add(step));
        let logits = forward(&tape, &named, &ids, &mask, nh, 0.1)?;
        let loss = ops::cross_entropy(&tape, &logits, &labels)?;
        let mut grads = tape.backward(&loss)?;
        let params: Vec<&Tensor> = named.iter().map(|(_, p)| p).collect();
        let norm = clip_grad_norm(&mut grads, &params, 1.0)?;
        let lr = sched.lr(step);
        let mut groups = hf_param_groups(named.iter_mut().map(|(n, p)| (n.clone(), p)).collect(), 0.01);
        opt.step(&mut groups, &grads, lr)?;
        last_loss = loss.item()?;
        first_loss.get_or_insert(last_loss);
        if step % 10 == 0 || step + 1 == steps {
            println!("  step {step:>4}  loss {last_loss:.4}  grad-norm {norm:.3}  lr {lr:.2e}");
        }
    }
    let acc1 = accuracy(&named, &eval_ids, &eval_mask, &eval_labels, nh)?;
    println!("  held-out accuracy {:.1}% -> {:.1}% in {:.2} s", 100.0 * acc0, 100.0 * acc1, start.elapsed().as_secs_f64());
    let ok = steps == 0 || first_loss.is_some_and(|f| last_loss < f);
    println!("  self-check: {}", if ok { "loss fell — engine core OK" } else { "LOSS DID NOT FALL" });
    println!("\nAlso here: `engram finetune`, `eval`, `predict`, `embed`, `inspect`, `recall-data` (see the README).");
    Ok(ok)
}

fn forward(tape: &Tape, p: &[(String, Tensor)], ids: &Tensor, mask: &Tensor, nh: usize, drop: f64) -> Result<Tensor> {
    let w = |n: &str| &p.iter().find(|(k, _)| k == n).expect("parameter exists").1;
    let lin = |x: &Tensor, n: &str| ops::linear(tape, x, w(&format!("{n}.weight")), Some(w(&format!("{n}.bias"))));
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let pos = Tensor::from_ids((0..b * t).map(|i| (i % t) as i64).collect(), &[b, t])?.to_device(ids.device())?;
    let x = ops::add(
        tape,
        &ops::embedding(tape, ids, w("embeddings.word_embeddings.weight"), Some(0))?,
        &ops::embedding(tape, &pos, w("embeddings.position_embeddings.weight"), None)?,
    )?;
    let x = ops::layer_norm(tape, &x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), 1e-12)?; // (B, T, C)
    let c = x.shape()[2];
    let heads = |n: &str| -> Result<Tensor> { ops::split_heads(tape, &lin(&x, n)?, nh) };
    let a = ops::attention(tape, &heads("query")?, &heads("key")?, &heads("value")?, Some(mask), 1.0 / ((c / nh) as f64).sqrt(), drop)?;
    let a = ops::dropout(tape, &lin(&ops::merge_heads(tape, &a)?, "output")?, drop)?;
    let x = ops::layer_norm(tape, &ops::add(tape, &x, &a)?, w("attention.LayerNorm.weight"), w("attention.LayerNorm.bias"), 1e-12)?;
    let f = lin(&ops::gelu(tape, &lin(&x, "intermediate")?)?, "ffn_output")?;
    let x = ops::layer_norm(tape, &ops::add(tape, &x, &f)?, w("output.LayerNorm.weight"), w("output.LayerNorm.bias"), 1e-12)?;
    lin(&ops::tanh(tape, &ops::mean_pool(tape, &x, mask)?)?, "classifier") // (B, 2)
}

fn accuracy(p: &[(String, Tensor)], ids: &Tensor, mask: &Tensor, labels: &Tensor, nh: usize) -> Result<f64> {
    let logits = forward(&Tape::inference(), p, ids, mask, nh, 0.0)?.to_f64_vec();
    let labels = labels.ids("accuracy")?;
    let hits = labels.iter().enumerate().filter(|&(i, &l)| (logits[2 * i + 1] > logits[2 * i]) == (l == 1)).count();
    Ok(hits as f64 / labels.len() as f64)
}


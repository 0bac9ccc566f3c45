//! The BERT forward pass on engram's ops, parameters kept under their HF names.
//!
//! Parameter names are canonical HF names *without* the `bert.` prefix (`embeddings.…`,
//! `encoder.layer.N.…`, `pooler.dense.…`) plus the head's `classifier.weight`/`classifier.bias`.
//! Checkpoints with or without the prefix, and with legacy `gamma`/`beta` LayerNorm names, load.
//! DistilBERT's names map onto the same canonical ones (`distilbert.transformer.layer.N.
//! attention.q_lin` → `encoder.layer.N.attention.self.query`, …, its `pre_classifier` →
//! `pooler.dense`) and back when saved (`Bert::hf_name`); it has no token-type embeddings.
//! RoBERTa's are BERT's under `roberta.`, except its sequence head: `classifier.dense` →
//! `head.dense`, `classifier.out_proj` → `classifier`. ELECTRA's are BERT's under `electra.`,
//! plus `embeddings_project` (embeddings narrower than the hidden states), with RoBERTa's head
//! names. ALBERT's one shared layer is canonically `encoder.layer.0` (used by every layer), its
//! `embedding_hidden_mapping_in` is `embeddings_project`, its `pooler` is `pooler.dense`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{Activation, BertConfig, Family};
use super::weights::read_safetensors_with;
use crate::data::Batch;
use crate::error::{file_err, shape_err, Error, Result};
use crate::ops;
use crate::tensor::{Device, Tensor};
use crate::util::Rng;
use crate::Tape;

/// The task head on top of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `BertModel`: hidden states and pooled output only.
    None,
    /// `BertForSequenceClassification`: dropout + Linear on the pooled [CLS] state.
    SequenceClassification { num_labels: usize },
    /// `BertForTokenClassification`: dropout + Linear on every token's hidden state.
    TokenClassification { num_labels: usize },
}

/// Sentence-embedding pooling (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// What loading found beside the expected tensors (transformers prints the same lists).
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Stored tensors the model does not use (e.g. an MLM head), by stored name.
    pub unexpected: Vec<String>,
    /// Tensors not in the checkpoint that were freshly initialised (a new head, a missing pooler).
    pub initialized: Vec<String>,
    /// Stored head tensors whose shape did not fit the requested head (re-initialised).
    pub mismatched: Vec<String>,
}

/// The arithmetic inference runs in: f32 throughout, the encoder's linear layers in int8
/// ([`Bert::quantize_int8`]; CPU only), or every linear layer's GEMM in bf16 with f32 sums
/// (bf16 autocast, [`Bert::bf16`]; CPU and CUDA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Int8,
    Bf16,
}

pub struct Bert {
    pub config: BertConfig,
    pub head: Head,
    /// Parameters by canonical HF name (see the module docs).
    pub params: BTreeMap<String, Tensor>,
    pub dir: PathBuf,
    /// Encoder linear weights quantized by [`Bert::quantize_int8`] (taken out of `params`).
    pub int8: BTreeMap<String, ops::Int8Weight>,
    /// The word-embedding table quantized by row (taken out of `params`), with `int8`.
    pub int8_words: Option<ops::Int8Rows>,
    /// bf16 autocast for inference: [`Bert::inference_tape`] turns it on (`Precision::Bf16`,
    /// or a model trained with `--bf16` evaluating itself). Training tapes set their own.
    pub bf16: bool,
}

/// A tensor the int8 loader quantized: a linear weight, or the word-embedding table.
enum Quantized {
    Linear(ops::Int8Weight),
    Rows(ops::Int8Rows),
}

impl Quantized {
    fn of(canonical: &str, t: &Tensor) -> Result<Quantized> {
        Ok(if canonical == WORDS { Quantized::Rows(ops::Int8Rows::quantize(t)?) } else { Quantized::Linear(ops::Int8Weight::quantize(t)?) })
    }

    fn shape(&self) -> [usize; 2] {
        match self {
            Quantized::Linear(w) => w.shape(),
            Quantized::Rows(r) => r.shape(),
        }
    }
}

const WORDS: &str = "embeddings.word_embeddings.weight";

/// One encoder layer's parameters, by name under `encoder.layer.N.`: what a checkpointed layer
/// takes as inputs, in this order.
const LAYER_PARAMS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// What an encoder layer computes besides its tensors.
#[derive(Clone, Copy)]
struct LayerSpec {
    nh: usize,
    scale: f64,
    drop: f64,
    attn_drop: f64,
    distil: bool,
    albert: bool,
    act: Activation,
    eps: f64,
}

/// `linear(tape, x, "attention.self.query")`-style access to a layer's weights.
type LayerOp<'a> = dyn Fn(&Tape, &Tensor, &str) -> Result<Tensor> + 'a;

impl LayerSpec {
    /// One post-LN encoder layer on `x (B, T, C)`: self-attention with the key padding `mask`,
    /// residual + LayerNorm, feed-forward, residual + LayerNorm; dropout where each family has it.
    fn run(&self, tape: &Tape, x: &Tensor, mask: &Tensor, lin: &LayerOp, ln: &LayerOp) -> Result<Tensor> {
        let heads = |n: &str| -> Result<Tensor> { ops::split_heads(tape, &lin(tape, x, &format!("attention.self.{n}"))?, self.nh) };
        let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?); // (B, NH, T, HS)
        let a = ops::merge_heads(tape, &ops::attention(tape, &q, &k, &v, Some(mask), self.scale, self.attn_drop)?)?; // (B, T, C)
        // DistilBERT applies no dropout to the attention output (only to the probabilities).
        let a = lin(tape, &a, "attention.output.dense")?;
        let a = if self.distil { a } else { ops::dropout(tape, &a, self.drop)? };
        let x = ln(tape, &ops::add(tape, &a, x)?, "attention.output.LayerNorm")?;
        let h = lin(tape, &x, "intermediate.dense")?; // (B, T, F)
        let h = match self.act {
            Activation::Gelu => ops::gelu(tape, &h)?,
            Activation::GeluTanh => ops::gelu_tanh(tape, &h)?,
            Activation::Relu => ops::relu(tape, &h)?,
        };
        let h = lin(tape, &h, "output.dense")?;
        // ALBERT's layer applies no dropout to the feed-forward output.
        let h = if self.albert { h } else { ops::dropout(tape, &h, self.drop)? };
        ln(tape, &ops::add(tape, &h, &x)?, "output.LayerNorm")
    }
}

/// DistilBERT's per-layer module names and BERT's, in the order `canonical` tries them.
const DISTIL_LAYER: [(&str, &str); 8] = [
    ("attention.q_lin", "attention.self.query"),
    ("attention.k_lin", "attention.self.key"),
    ("attention.v_lin", "attention.self.value"),
    ("attention.out_lin", "attention.output.dense"),
    ("sa_layer_norm", "attention.output.LayerNorm"),
    ("ffn.lin1", "intermediate.dense"),
    ("ffn.lin2", "output.dense"),
    ("output_layer_norm", "output.LayerNorm"),
];

/// A DistilBERT tensor name in BERT's canonical terms (None: not a DistilBERT name).
fn distil_canonical(name: &str) -> Option<String> {
    if let Some(p) = name.strip_prefix("pre_classifier.") {
        return Some(format!("pooler.dense.{p}"));
    }
    let n = name.strip_prefix("distilbert.")?;
    if n.starts_with("embeddings.") {
        return Some(n.to_string());
    }
    let rest = n.strip_prefix("transformer.layer.")?;
    let (l, module) = rest.split_once('.')?;
    DISTIL_LAYER.iter().find_map(|(d, b)| module.strip_prefix(d).map(|tail| format!("encoder.layer.{l}.{b}{tail}")))
}

/// ALBERT's names inside its one shared layer, and BERT's for them.
const ALBERT_LAYER: [(&str, &str); 8] = [
    ("attention.query.", "attention.self.query."),
    ("attention.key.", "attention.self.key."),
    ("attention.value.", "attention.self.value."),
    ("attention.dense.", "attention.output.dense."),
    ("attention.LayerNorm.", "attention.output.LayerNorm."),
    ("ffn_output.", "output.dense."),
    ("ffn.", "intermediate.dense."),
    ("full_layer_layer_norm.", "output.LayerNorm."),
];
const ALBERT_SHARED: &str = "encoder.albert_layer_groups.0.albert_layers.0.";

/// An ALBERT tensor name in BERT's canonical terms (None: not an ALBERT name).
fn albert_canonical(name: &str) -> Option<String> {
    let n = name.strip_prefix("albert.")?;
    if let Some(p) = n.strip_prefix("encoder.embedding_hidden_mapping_in.") {
        return Some(format!("embeddings_project.{p}"));
    }
    if let Some(p) = n.strip_prefix("pooler.") {
        return Some(format!("pooler.dense.{p}"));
    }
    if let Some(rest) = n.strip_prefix(ALBERT_SHARED) {
        return ALBERT_LAYER.iter().find_map(|(a, b)| rest.strip_prefix(a).map(|tail| format!("encoder.layer.0.{b}{tail}")));
    }
    Some(n.to_string())
}

/// `bert.x` / `roberta.x` → `x`; `….gamma`/`….beta` → `….weight`/`….bias`; DistilBERT names →
/// BERT's; RoBERTa's sequence head `classifier.dense` → `head.dense`, `classifier.out_proj` →
/// `classifier`.
/// Whether `--int8` quantizes the tensor of this canonical name: the encoder layers' linear
/// weights (two-dimensional; LayerNorm weights are vectors) and the word-embedding table.
fn quantizable(canonical: &str, shape: &[usize]) -> bool {
    (canonical.starts_with("encoder.layer.") && canonical.ends_with(".weight") || canonical == WORDS) && shape.len() == 2 && shape[1] > 0
}

fn canonical(name: &str) -> String {
    if let Some(c) = distil_canonical(name).or_else(|| albert_canonical(name)) {
        return c;
    }
    if let Some(p) = name.strip_prefix("classifier.dense.") {
        return format!("head.dense.{p}");
    }
    if let Some(p) = name.strip_prefix("classifier.out_proj.") {
        return format!("classifier.{p}");
    }
    let n = ["bert.", "roberta.", "electra."].iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    if let Some(p) = n.strip_suffix(".gamma") {
        format!("{p}.weight")
    } else if let Some(p) = n.strip_suffix(".beta") {
        format!("{p}.bias")
    } else {
        n.to_string()
    }
}

impl Bert {
    /// Names and shapes of every parameter the model (with `head`) needs.
    pub fn expected(config: &BertConfig, head: Head) -> Vec<(String, Vec<usize>)> {
        let (c, f, e) = (config.hidden_size, config.intermediate_size, config.embedding_size);
        let distil = config.family == Family::DistilBert;
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![config.vocab_size, e]),
            ("embeddings.position_embeddings.weight".into(), vec![config.max_position_embeddings, e]),
            ("embeddings.LayerNorm.weight".into(), vec![e]),
            ("embeddings.LayerNorm.bias".into(), vec![e]),
        ];
        if !distil {
            v.push(("embeddings.token_type_embeddings.weight".into(), vec![config.type_vocab_size, e]));
        }
        if e != c {
            v.push(("embeddings_project.weight".into(), vec![c, e]));
            v.push(("embeddings_project.bias".into(), vec![c]));
        }
        // ALBERT: one layer's weights, shared by all.
        let stored_layers = if config.family == Family::Albert { 1 } else { config.num_hidden_layers };
        for l in 0..stored_layers {
            let p = format!("encoder.layer.{l}");
            for (name, shape) in [
                ("attention.self.query", (c, c)),
                ("attention.self.key", (c, c)),
                ("attention.self.value", (c, c)),
                ("attention.output.dense", (c, c)),
                ("intermediate.dense", (f, c)),
                ("output.dense", (c, f)),
            ] {
                v.push((format!("{p}.{name}.weight"), vec![shape.0, shape.1]));
                v.push((format!("{p}.{name}.bias"), vec![shape.0]));
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((format!("{p}.{ln}.weight"), vec![c]));
                v.push((format!("{p}.{ln}.bias"), vec![c]));
            }
        }
        // DistilBERT has a pooler-like layer (pre_classifier) only in its sequence-classification
        // head; RoBERTa's classifiers use no pooler, its sequence head has its own dense layer.
        let seq = matches!(head, Head::SequenceClassification { .. });
        let mut dense = |p: &str| {
            v.push((format!("{p}.weight"), vec![c, c]));
            v.push((format!("{p}.bias"), vec![c]));
        };
        match (config.family, seq) {
            (Family::Bert | Family::Albert, _) | (Family::DistilBert, true) => dense("pooler.dense"),
            (Family::Roberta | Family::Electra, true) => dense("head.dense"),
            _ => {}
        }
        match head {
            Head::None => {}
            Head::SequenceClassification { num_labels } | Head::TokenClassification { num_labels } => {
                v.push(("classifier.weight".into(), vec![num_labels, c]));
                v.push(("classifier.bias".into(), vec![num_labels]));
            }
        }
        v
    }

    /// Open an HF model directory (`config.json`, `model.safetensors`). `head` picks the task
    /// head; a head (or pooler) absent from the checkpoint is initialised as transformers does
    /// (normal(0, initializer_range) weights, zero biases) from `seed`.
    pub fn load(dir: impl AsRef<Path>, head: Head, seed: u64) -> Result<(Bert, LoadReport)> {
        Self::load_with(dir, head, seed, Precision::F32)
    }

    /// [`Bert::load`] for inference in `precision`. With [`Precision::Int8`] each encoder linear
    /// weight is quantized as soon as it is read and its f32 copy dropped (see
    /// [`Bert::quantize_int8`]), so loading never holds the f32 encoder.
    pub fn load_with(dir: impl AsRef<Path>, head: Head, seed: u64, precision: Precision) -> Result<(Bert, LoadReport)> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return file_err(dir, "not a model directory");
        }
        let config = BertConfig::from_file(dir.join("config.json"))?;
        let wpath = dir.join("model.safetensors");
        if !wpath.is_file() {
            let hint = if dir.join("pytorch_model.bin").is_file() { " (pytorch_model.bin is not read: convert it to safetensors)" } else { "" };
            return file_err(&wpath, format!("missing{hint}"));
        }
        let mut int8 = BTreeMap::new();
        let stored = read_safetensors_with(&wpath, |name, src| {
            let c = canonical(name);
            if precision != Precision::Int8 || !quantizable(&c, src.shape()) || !src.is_float() {
                return src.tensor().map(Some);
            }
            let q = if c == WORDS {
                // The largest tensor: quantized as it is read, never held in f32.
                let mut rows = ops::Int8Rows::empty(src.shape()[1]).map_err(|e| e.to_string())?;
                src.float_pieces(src.shape()[1], |p| rows.push_rows(p).map_err(|e| e.to_string()))?;
                Quantized::Rows(rows)
            } else {
                Quantized::of(&c, &src.tensor()?).map_err(|e| e.to_string())?
            };
            if int8.insert(c.clone(), (name.to_string(), q)).is_some() {
                return Err(format!("a second tensor maps to {c}"));
            }
            Ok(None)
        })?;
        let (mut bert, report) = Self::from_tensors(config, stored, int8, head, seed, dir, &wpath)?;
        bert.bf16 = precision == Precision::Bf16;
        Ok((bert, report))
    }

    /// The tape inference runs on: [`Tape::inference`], with bf16 autocast when [`Bert::bf16`].
    pub fn inference_tape(&self) -> Tape {
        Tape::inference().bf16(self.bf16)
    }

    /// Build from already-read tensors (by stored name) and weights already quantized (by
    /// canonical name, with their stored name); errors name `wpath`.
    fn from_tensors(
        config: BertConfig,
        stored: BTreeMap<String, Tensor>,
        mut int8: BTreeMap<String, (String, Quantized)>,
        head: Head,
        seed: u64,
        dir: &Path,
        wpath: &Path,
    ) -> Result<(Bert, LoadReport)> {
        let mut report = LoadReport::default();
        let mut by_canon: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
        for (name, t) in stored {
            let c = canonical(&name);
            if let Some((prev, _)) = by_canon.get(&c) {
                return file_err(wpath, format!("tensors {prev} and {name} both map to {c}"));
            }
            by_canon.insert(c, (name, t));
        }
        let expected = Self::expected(&config, head);
        let mut params = BTreeMap::new();
        let mut quantized = BTreeMap::new();
        let mut int8_words = None;
        let mut missing = Vec::new();
        let mut rng = Rng::new(seed);
        for (name, shape) in &expected {
            if let Some((stored_name, q)) = int8.remove(name) {
                if q.shape() != shape.as_slice() {
                    return file_err(wpath, format!("tensor {stored_name} has shape {:?} but config.json implies {shape:?}", q.shape()));
                }
                match q {
                    Quantized::Linear(w) => drop(quantized.insert(name.clone(), w)),
                    Quantized::Rows(r) => int8_words = Some(r),
                }
                continue;
            }
            let stored = by_canon.remove(name);
            // A head trained for another label set (different size): re-initialised, as
            // transformers does with ignore_mismatched_sizes=True.
            let stored = match stored {
                Some((n, t)) if name.starts_with("classifier.") && t.shape() != shape.as_slice() => {
                    report.mismatched.push(format!("{n} {:?} -> {shape:?}", t.shape()));
                    None
                }
                other => other,
            };
            match stored {
                Some((stored_name, t)) => {
                    if t.shape() != shape.as_slice() {
                        return file_err(
                            wpath,
                            format!("tensor {stored_name} has shape {:?} but config.json implies {shape:?}", t.shape()),
                        );
                    }
                    if t.dtype() != crate::DType::F32 {
                        return file_err(wpath, format!("tensor {stored_name} holds integers, expected floats"));
                    }
                    params.insert(name.clone(), t);
                }
                None if name.starts_with("classifier.") || name.starts_with("pooler.") || name.starts_with("head.") => {
                    let t = if name.ends_with(".bias") {
                        Tensor::from_vec(vec![0f32; shape[0]], shape)?
                    } else {
                        let n = shape.iter().product();
                        let std = config.initializer_range;
                        Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| (x * std) as f32).collect::<Vec<f32>>(), shape)?
                    };
                    report.initialized.push(name.clone());
                    params.insert(name.clone(), t);
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            let more = if missing.len() > 8 { format!(" and {} more", missing.len() - 8) } else { String::new() };
            return file_err(
                wpath,
                format!("missing {} tensor(s) the config needs: {}{more}", missing.len(), missing[..missing.len().min(8)].join(", ")),
            );
        }
        report.unexpected = by_canon
            .into_iter()
            .filter(|(c, _)| !c.ends_with("position_ids"))
            .map(|(_, (stored_name, _))| stored_name)
            .chain(int8.into_values().map(|(stored_name, _)| stored_name))
            .collect();
        let params = params.into_iter().map(|(k, v)| (k, v.requires_grad())).collect();
        Ok((Bert { config, head, params, dir: dir.to_path_buf(), int8: quantized, int8_words, bf16: false }, report))
    }

    /// Replace the task head with a fresh one (normal(0, initializer_range) weights, zero bias),
    /// for a label set other than the one the checkpoint's head was trained on.
    pub fn reinit_head(&mut self, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed ^ 0x6865_6164);
        let device = self.device();
        for name in ["classifier.weight", "classifier.bias"] {
            let Some(old) = self.params.get(name) else { continue };
            let shape = old.shape().to_vec();
            let n = shape.iter().product();
            let t = if name.ends_with("bias") {
                Tensor::from_vec(vec![0f32; n], &shape)?
            } else {
                let std = self.config.initializer_range;
                Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| (x * std) as f32).collect::<Vec<f32>>(), &shape)?
            };
            self.params.insert(name.to_string(), t.to_device(device)?.requires_grad());
        }
        Ok(())
    }

    /// The checkpoint name of canonical parameter `name` in this model's family (what
    /// transformers' `save_pretrained` writes): `bert.…` / `roberta.…` / `distilbert.…`, heads
    /// unprefixed (RoBERTa's sequence head as `classifier.dense` / `classifier.out_proj`).
    pub fn hf_name(&self, name: &str) -> String {
        if matches!(self.config.family, Family::Roberta | Family::Electra) {
            if let Some(p) = name.strip_prefix("head.dense.") {
                return format!("classifier.dense.{p}");
            }
            if let (Some(p), Head::SequenceClassification { .. }) = (name.strip_prefix("classifier."), self.head) {
                return format!("classifier.out_proj.{p}");
            }
        }
        if name.starts_with("classifier.") {
            return name.to_string();
        }
        match self.config.family {
            Family::Bert => return format!("bert.{name}"),
            Family::Roberta => return format!("roberta.{name}"),
            Family::Electra => return format!("electra.{name}"),
            Family::Albert => {
                if let Some(p) = name.strip_prefix("pooler.dense.") {
                    return format!("albert.pooler.{p}");
                }
                if let Some(p) = name.strip_prefix("embeddings_project.") {
                    return format!("albert.encoder.embedding_hidden_mapping_in.{p}");
                }
                if let Some(rest) = name.strip_prefix("encoder.layer.0.") {
                    if let Some(n) = ALBERT_LAYER.iter().find_map(|(a, b)| rest.strip_prefix(b).map(|tail| format!("albert.{ALBERT_SHARED}{a}{tail}"))) {
                        return n;
                    }
                }
                return format!("albert.{name}");
            }
            Family::DistilBert => {}
        }
        if let Some(p) = name.strip_prefix("pooler.dense.") {
            return format!("pre_classifier.{p}");
        }
        if let Some(rest) = name.strip_prefix("encoder.layer.") {
            if let Some((l, module)) = rest.split_once('.') {
                if let Some(n) = DISTIL_LAYER.iter().find_map(|(d, b)| module.strip_prefix(b).map(|tail| format!("distilbert.transformer.layer.{l}.{d}{tail}"))) {
                    return n;
                }
            }
        }
        format!("distilbert.{name}")
    }

    /// Whether canonical parameter `name` belongs to the task head rather than the backbone
    /// (what `--freeze-backbone` leaves trainable): the classifier, RoBERTa's head dense layer,
    /// and DistilBERT's pre_classifier (canonically `pooler.dense`; BERT's pooler is backbone).
    pub fn is_head_param(&self, name: &str) -> bool {
        name.starts_with("classifier.") || name.starts_with("head.") || (self.config.family == Family::DistilBert && name.starts_with("pooler."))
    }

    pub fn num_parameters(&self) -> usize {
        self.params.values().map(|t| t.numel()).sum()
    }

    /// Move every parameter to `device` (they stay trainable).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if (!self.int8.is_empty() || self.int8_words.is_some()) && device != Device::Cpu {
            return Err(Error::Device("an int8-quantized model runs on the CPU only".into()));
        }
        for t in self.params.values_mut() {
            *t = t.to_device(device)?.requires_grad();
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.params.values().next().map(|t| t.device()).unwrap_or(Device::Cpu)
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).ok_or_else(|| Error::Autograd(format!("bert: no parameter {name}")))
    }

    fn linear(&self, tape: &Tape, x: &Tensor, name: &str) -> Result<Tensor> {
        let bias = self.p(&format!("{name}.bias"))?;
        match self.int8.get(&format!("{name}.weight")) {
            Some(w) => ops::linear_int8(tape, x, w, Some(bias)),
            None => ops::linear(tape, x, self.p(&format!("{name}.weight"))?, Some(bias)),
        }
    }

    /// Dynamic int8 quantization for CPU inference (`torch.ao.quantization.quantize_dynamic` on
    /// the encoder's `nn.Linear`s): every linear weight of the encoder layers (query, key, value,
    /// attention output, intermediate, output — 6 per layer, most of the FLOPs) is quantized per
    /// output channel, and the word-embedding table (most of the bytes) per row; each replaces
    /// its f32 tensor, so the model holds ~4× fewer bytes for them. Position and token-type
    /// embeddings, LayerNorms, the pooler and the head stay f32. The model can no longer
    /// be trained, saved or moved to a GPU. Returns the bytes the f32 weights took and the
    /// quantized ones take.
    pub fn quantize_int8(&mut self) -> Result<(usize, usize)> {
        if self.device() != Device::Cpu {
            return Err(Error::Device("int8 quantization runs on the CPU (the model is on a GPU)".into()));
        }
        let names: Vec<String> = self.params.iter().filter(|(k, t)| quantizable(k, t.shape())).map(|(k, _)| k.clone()).collect();
        let (mut before, mut after) = (0, 0);
        for name in names {
            before += self.params[&name].numel() * 4;
            match Quantized::of(&name, &self.params[&name])? {
                Quantized::Linear(w) => {
                    after += w.bytes();
                    self.int8.insert(name.clone(), w);
                }
                Quantized::Rows(r) => {
                    after += r.bytes();
                    self.int8_words = Some(r);
                }
            }
            self.params.remove(&name);
        }
        Ok((before, after))
    }

    fn layer_norm(&self, tape: &Tape, x: &Tensor, name: &str) -> Result<Tensor> {
        ops::layer_norm(tape, x, self.p(&format!("{name}.weight"))?, self.p(&format!("{name}.bias"))?, self.config.layer_norm_eps)
    }

    /// The encoder's last hidden state `(B, T, C)`. `train` turns dropout on (it needs a
    /// training tape to take effect): hidden-state dropout where HF applies it and
    /// `attention_probs_dropout_prob` inside the fused attention.
    pub fn encode(&self, tape: &Tape, batch: &Batch, train: bool) -> Result<Tensor> {
        let ids = batch.input_ids.to_device(self.device())?;
        let words = self.words(tape, &ids)?;
        self.encode_embeds(tape, &words, &batch.token_type_ids, &batch.attention_mask, train)
    }

    /// The word embeddings of `ids` `(…, E)`, from the f32 table or the int8 one.
    pub fn words(&self, tape: &Tape, ids: &Tensor) -> Result<Tensor> {
        match &self.int8_words {
            Some(q) => ops::embedding_int8(tape, ids, q),
            None => ops::embedding(tape, ids, self.p(WORDS)?, None),
        }
    }

    /// The word-embedding table `(V, E)` (f32; an error once quantized — see [`Bert::words`]).
    pub fn word_embeddings(&self) -> Result<&Tensor> {
        self.p(WORDS)
    }

    /// The word-embedding table's values, dequantized if it is int8.
    pub fn word_embedding_values(&self) -> Result<Vec<f64>> {
        match &self.int8_words {
            Some(q) => Ok(q.dequantize().into_iter().map(f64::from).collect()),
            None => Ok(self.word_embeddings()?.to_f64_vec()),
        }
    }

    /// The encoder from word embeddings `words (B, T, C)` on (HF's `inputs_embeds`): position and
    /// token-type embeddings are added, then LayerNorm, dropout and the layers. The recurrent
    /// memory splices its memory states into `words` at the [MEM] positions.
    pub fn encode_embeds(&self, tape: &Tape, words: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let cfg = &self.config;
        let s = words.shape();
        if s.len() != 3 || s[2] != cfg.embedding_size || token_type_ids.shape() != &s[..2] || attention_mask.shape() != &s[..2] {
            return shape_err(
                "bert",
                format!("embeddings {s:?}, token types {:?} and mask {:?} do not fit embedding size {}", token_type_ids.shape(), attention_mask.shape(), cfg.embedding_size),
            );
        }
        let (b, t) = (s[0], s[1]);
        if t > cfg.max_tokens() {
            return shape_err("bert", format!("{t} tokens exceed the {} positions of max_position_embeddings = {}", cfg.max_tokens(), cfg.max_position_embeddings));
        }
        let device = self.device();
        let drop = if train { cfg.hidden_dropout_prob } else { 0.0 };
        let attn_drop = if train { cfg.attention_probs_dropout_prob } else { 0.0 };
        let pos = match cfg.family {
            // transformers' create_position_ids_from_input_ids: real tokens count up from
            // pad + 1, padding sits at pad (the mask marks the real tokens).
            Family::Roberta => {
                let m = attention_mask.to_f64_vec();
                let mut ids = Vec::with_capacity(b * t);
                for row in m.chunks(t) {
                    let mut n = 0i64;
                    for &x in row {
                        n += (x != 0.0) as i64;
                        ids.push(if x != 0.0 { cfg.pad_token_id + n } else { cfg.pad_token_id });
                    }
                }
                Tensor::from_ids(ids, &[b, t])?
            }
            _ => Tensor::from_ids((0..b * t).map(|i| (i % t) as i64).collect(), &[b, t])?,
        }
        .to_device(device)?;
        // RoBERTa has one token type (its tokenizer marks none).
        let types = if cfg.family == Family::Roberta { Tensor::from_ids(vec![0; b * t], &[b, t])? } else { token_type_ids.clone() }.to_device(device)?;
        let mask = attention_mask.to_device(device)?;
        let distil = cfg.family == Family::DistilBert;
        let mut e = ops::add(tape, words, &ops::embedding(tape, &pos, self.p("embeddings.position_embeddings.weight")?, None)?)?;
        if !distil {
            e = ops::add(tape, &e, &ops::embedding(tape, &types, self.p("embeddings.token_type_embeddings.weight")?, None)?)?;
        }
        let mut x = ops::dropout(tape, &self.layer_norm(tape, &e, "embeddings.LayerNorm")?, drop)?; // (B, T, E)
        if cfg.embedding_size != cfg.hidden_size {
            x = self.linear(tape, &x, "embeddings_project")?; // ELECTRA: (B, T, E) → (B, T, C)
        }
        let spec = LayerSpec {
            nh: cfg.num_attention_heads,
            scale: 1.0 / (cfg.head_size() as f64).sqrt(),
            drop,
            attn_drop,
            distil,
            albert: cfg.family == Family::Albert,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{}", if spec.albert { 0 } else { l });
            x = if tape.is_checkpointing() && self.int8.is_empty() {
                // Only the layer's input is kept; backward runs the layer again (see Tape::checkpoint).
                let mut inputs = vec![&x, &mask];
                for n in LAYER_PARAMS {
                    inputs.push(self.p(&format!("{p}.{n}"))?);
                }
                let f: crate::autograd::CheckpointFn = std::rc::Rc::new(move |tape: &Tape, ins: &[Tensor]| {
                    let w = |n: &str| &ins[2 + LAYER_PARAMS.iter().position(|&q| q == n).expect("a LAYER_PARAMS name")];
                    let lin = |t: &Tape, x: &Tensor, n: &str| ops::linear(t, x, w(&format!("{n}.weight")), Some(w(&format!("{n}.bias"))));
                    let ln = |t: &Tape, x: &Tensor, n: &str| ops::layer_norm(t, x, w(&format!("{n}.weight")), w(&format!("{n}.bias")), spec.eps);
                    spec.run(tape, &ins[0], &ins[1], &lin, &ln)
                });
                tape.checkpoint("encoder_layer", &inputs, f)?
            } else {
                let lin = |t: &Tape, x: &Tensor, n: &str| self.linear(t, x, &format!("{p}.{n}"));
                let ln = |t: &Tape, x: &Tensor, n: &str| self.layer_norm(t, x, &format!("{p}.{n}"));
                spec.run(tape, &x, &mask, &lin, &ln)?
            };
        }
        Ok(x)
    }

    /// The pooler: `tanh(dense(x[:, 0]))` — `(B, C)`; DistilBERT's `pre_classifier`:
    /// `relu(dense(x[:, 0]))`.
    pub fn pool(&self, tape: &Tape, hidden: &Tensor) -> Result<Tensor> {
        let d = self.linear(tape, &ops::token(tape, hidden, 0)?, "pooler.dense")?;
        match self.config.family {
            Family::Bert | Family::Roberta | Family::Electra | Family::Albert => ops::tanh(tape, &d),
            Family::DistilBert => ops::relu(tape, &d),
        }
    }

    /// The head's logits: `(B, L)` for sequence classification, `(B, T, L)` for token
    /// classification.
    pub fn logits(&self, tape: &Tape, batch: &Batch, train: bool) -> Result<Tensor> {
        let hidden = self.encode(tape, batch, train)?;
        self.head(tape, &hidden, train)
    }

    /// The task head on the encoder's output `hidden (B, T, C)`.
    pub fn head(&self, tape: &Tape, hidden: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = hidden.clone();
        let p = if train { self.config.classifier_dropout.unwrap_or(self.config.hidden_dropout_prob) } else { 0.0 };
        match self.head {
            Head::None => Err(Error::Autograd("bert: logits need a classification head".into())),
            Head::SequenceClassification { .. } if matches!(self.config.family, Family::Roberta | Family::Electra) => {
                // RobertaClassificationHead: dropout, dense, tanh, dropout, out_proj on <s>;
                // ElectraClassificationHead: the same with GELU.
                let x = ops::dropout(tape, &ops::token(tape, &hidden, 0)?, p)?;
                let d = self.linear(tape, &x, "head.dense")?;
                let a = if self.config.family == Family::Electra { ops::gelu(tape, &d)? } else { ops::tanh(tape, &d)? };
                let x = ops::dropout(tape, &a, p)?;
                self.linear(tape, &x, "classifier")
            }
            Head::SequenceClassification { .. } => {
                let pooled = ops::dropout(tape, &self.pool(tape, &hidden)?, p)?;
                self.linear(tape, &pooled, "classifier")
            }
            Head::TokenClassification { .. } => {
                // DistilBertForTokenClassification drops out with `dropout`, not seq_classif_dropout.
                let p = if self.config.family == Family::DistilBert && train { self.config.hidden_dropout_prob } else { p };
                self.linear(tape, &ops::dropout(tape, &hidden, p)?, "classifier")
            }
        }
    }

    /// Sentence embeddings `(B, C)` on the host: mean over real tokens or the [CLS] state,
    /// optionally L2-normalised (sentence-transformers' `Normalize`). On the CPU it runs on a
    /// worker of the thread pool ([`crate::util::on_pool`]).
    pub fn embed(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        if self.device() == Device::Cpu {
            crate::util::on_pool(|| self.embed_here(batch, pooling, normalize))
        } else {
            self.embed_here(batch, pooling, normalize)
        }
    }

    fn embed_here(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        let tape = self.inference_tape();
        let hidden = self.encode(&tape, batch, false)?;
        let pooled = match pooling {
            Pooling::Mean => ops::mean_pool(&tape, &hidden, &batch.attention_mask.to_device(self.device())?)?,
            Pooling::Cls => ops::token(&tape, &hidden, 0)?,
        };
        let c = self.config.hidden_size;
        let v = pooled.to_f64_vec();
        Ok(v.chunks(c)
            .map(|row| {
                let norm = if normalize { row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12) } else { 1.0 };
                row.iter().map(|x| (x / norm) as f32).collect()
            })
            .collect())
    }
}

/// The pooling a sentence-transformers directory asks for (`1_Pooling/config.json`), and
/// whether it L2-normalises (a `Normalize` module in `modules.json`). Defaults: mean, no.
pub fn sentence_config(dir: &Path) -> Result<(Pooling, bool)> {
    let pool_path = dir.join("1_Pooling/config.json");
    let pooling = if pool_path.is_file() {
        let text = std::fs::read_to_string(&pool_path).map_err(|e| Error::File { path: pool_path.display().to_string(), detail: e.to_string() })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File { path: pool_path.display().to_string(), detail: format!("not valid JSON: {e}") })?;
        let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        if on("pooling_mode_mean_tokens") {
            Pooling::Mean
        } else if on("pooling_mode_cls_token") {
            Pooling::Cls
        } else {
            return file_err(&pool_path, "only mean and cls pooling are supported");
        }
    } else {
        Pooling::Mean
    };
    let modules = dir.join("modules.json");
    let normalize = std::fs::read_to_string(&modules).map(|t| t.contains("models.Normalize")).unwrap_or(false);
    Ok((pooling, normalize))
}

//! `BertConfig` from a Hugging Face `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{file_err, Result};

/// The feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: exact erf GELU.
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`: the tanh approximation.
    GeluTanh,
    Relu,
}

#[derive(Debug, Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    /// ELECTRA: the width of the embeddings (projected to hidden_size when it differs).
    #[serde(default)]
    embedding_size: Option<usize>,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<i64>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    is_decoder: bool,
    #[serde(default = "default_init")]
    initializer_range: f64,
    #[serde(default)]
    classifier_dropout: Option<f64>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}

/// Which member of the BERT family a checkpoint is. DistilBERT is a BERT without token types or
/// pooler, with other tensor names, no dropout after the attention output, and a ReLU
/// `pre_classifier` in place of the pooler's tanh in its sequence-classification head.
/// RoBERTa (and XLM-R, the same architecture) is a BERT whose position ids start after the
/// padding index, whose single token type is always 0, and whose sequence head is
/// dropout → dense → tanh → dropout → out_proj on the first token (no pooler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    DistilBert,
    Roberta,
    /// ELECTRA (the discriminator): a BERT whose embeddings may be narrower than its hidden
    /// states (`embedding_size`, then `embeddings_project`), with no pooler, and RoBERTa's
    /// sequence head with GELU in place of tanh.
    Electra,
    /// ALBERT: narrow embeddings projected (`embedding_hidden_mapping_in`), one encoder layer's
    /// weights shared by every layer, a tanh pooler, no dropout after the feed-forward output.
    Albert,
}

/// An ALBERT `config.json` in `BertConfig` terms: `classifier_dropout_prob` is the heads'
/// dropout; one layer group of one layer (every released ALBERT) is what engram shares.
fn albert_as_bert(v: &serde_json::Value) -> Result<serde_json::Value> {
    const P: &str = "config.json";
    let Some(obj) = v.as_object() else { return file_err(P, "not a JSON object") };
    for key in ["num_hidden_groups", "inner_group_num"] {
        match obj.get(key).map(|x| x.as_u64()) {
            None | Some(Some(1)) => {}
            Some(n) => return file_err(P, format!("{key} = {}: engram runs ALBERTs with one shared layer (num_hidden_groups = inner_group_num = 1)", n.map_or("not a count".to_string(), |n| n.to_string()))),
        }
    }
    let mut out = obj.clone();
    if let Some(p) = obj.get("classifier_dropout_prob") {
        out.insert("classifier_dropout".into(), p.clone());
    }
    Ok(serde_json::Value::Object(out))
}

/// A DistilBERT `config.json` in `BertConfig` terms (field names translated; the original stays
/// in `raw`).
fn distilbert_as_bert(v: &serde_json::Value) -> Result<serde_json::Value> {
    const P: &str = "config.json";
    let Some(obj) = v.as_object() else { return file_err(P, "not a JSON object") };
    if obj.get("sinusoidal_pos_embds").and_then(|x| x.as_bool()) == Some(true) {
        return file_err(P, "sinusoidal_pos_embds = true: fixed sinusoidal position embeddings are not supported (learned ones are)");
    }
    let mut out = serde_json::Map::new();
    for (from, to) in [
        ("vocab_size", "vocab_size"),
        ("dim", "hidden_size"),
        ("n_layers", "num_hidden_layers"),
        ("n_heads", "num_attention_heads"),
        ("hidden_dim", "intermediate_size"),
        ("activation", "hidden_act"),
        ("dropout", "hidden_dropout_prob"),
        ("attention_dropout", "attention_probs_dropout_prob"),
        ("seq_classif_dropout", "classifier_dropout"),
        ("max_position_embeddings", "max_position_embeddings"),
        ("pad_token_id", "pad_token_id"),
        ("initializer_range", "initializer_range"),
        ("id2label", "id2label"),
        ("num_labels", "num_labels"),
        ("architectures", "architectures"),
    ] {
        if let Some(x) = obj.get(from) {
            out.insert(to.into(), x.clone());
        }
    }
    for required in ["dim", "n_layers", "n_heads", "hidden_dim"] {
        if !obj.contains_key(required) {
            return file_err(P, format!("a DistilBERT config needs \"{required}\""));
        }
    }
    out.insert("model_type".into(), "bert".into());
    out.insert("type_vocab_size".into(), 1.into()); // unused: DistilBERT has no token types
    out.insert("layer_norm_eps".into(), serde_json::json!(1e-12)); // DistilBERT's fixed eps
    Ok(serde_json::Value::Object(out))
}

/// An error about a translated DistilBERT config in the file's own field names.
fn distilbert_names(detail: &str) -> String {
    let mut d = detail.replace("not a BERT config", "not a DistilBERT config");
    for (bert, distil) in [
        ("num_hidden_layers", "n_layers"),
        ("num_attention_heads", "n_heads"),
        ("intermediate_size", "hidden_dim"),
        ("hidden_size", "dim"),
        ("hidden_act", "activation"),
        ("hidden_dropout_prob", "dropout"),
        ("attention_probs_dropout_prob", "attention_dropout"),
    ] {
        d = d.replace(bert, distil);
    }
    d
}

/// The architecture of a BERT checkpoint (what transformers' `BertConfig` holds that engram uses).
#[derive(Debug, Clone)]
pub struct BertConfig {
    /// BERT or DistilBERT (`model_type`).
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The embeddings' width: `hidden_size` except in ELECTRA checkpoints that project them.
    pub embedding_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub initializer_range: f64,
    pub classifier_dropout: Option<f64>,
    /// Label names by class index (`id2label`), empty when the config names none.
    pub id2label: Vec<String>,
    pub architectures: Vec<String>,
    /// The whole `config.json`, kept so a saved model carries every field it came with.
    pub raw: serde_json::Value,
}

/// The most encoder layers a config may declare.
const MAX_LAYERS: usize = 1024;

impl BertConfig {
    /// Read and validate `config.json`; every error names the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return file_err(path, format!("cannot read the model config: {e}")),
        };
        Self::from_json(&text).map_err(|e| match e {
            crate::Error::File { detail, .. } => crate::Error::File { path: path.display().to_string(), detail },
            other => other,
        })
    }

    /// Parse and validate the text of a `config.json` (errors carry the path "config.json").
    pub fn from_json(text: &str) -> Result<BertConfig> {
        const P: &str = "config.json";
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return file_err(P, format!("not valid JSON: {e}")),
        };
        match value.get("model_type").and_then(|m| m.as_str()) {
            // Validated in BERT terms; errors speak DistilBERT's field names.
            Some("distilbert") => Self::from_value(distilbert_as_bert(&value)?, value, Family::DistilBert).map_err(|e| match e {
                crate::Error::File { path, detail } => crate::Error::File { path, detail: distilbert_names(&detail) },
                other => other,
            }),
            Some("roberta" | "xlm-roberta") => Self::from_value(value.clone(), value, Family::Roberta),
            Some("electra") => Self::from_value(value.clone(), value, Family::Electra),
            Some("albert") => Self::from_value(albert_as_bert(&value)?, value, Family::Albert),
            _ => Self::from_value(value.clone(), value, Family::Bert),
        }
    }

    /// `as_bert`: the config in BERT's field names; `value`: the file as written (kept as `raw`).
    fn from_value(as_bert: serde_json::Value, value: serde_json::Value, family: Family) -> Result<BertConfig> {
        const P: &str = "config.json";
        let raw: Raw = match serde_json::from_value(as_bert) {
            Ok(r) => r,
            Err(e) => return file_err(P, format!("not a BERT config: {e}")),
        };
        if let (Some(mt), Family::Bert) = (&raw.model_type, family) {
            if mt != "bert" {
                return file_err(P, format!("model_type \"{mt}\" is not supported (engram runs \"bert\", \"distilbert\", \"roberta\", \"xlm-roberta\", \"electra\" and \"albert\")"));
            }
        }
        if let Some(pe) = &raw.position_embedding_type {
            if pe != "absolute" {
                return file_err(P, format!("position_embedding_type \"{pe}\" is not supported (only \"absolute\"; relative position embeddings are not implemented)"));
            }
        }
        if raw.is_decoder {
            return file_err(P, "is_decoder = true: decoder BERTs (causal masks, cross-attention) are not supported");
        }
        let hidden_act = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return file_err(P, format!("hidden_act \"{other}\" is not supported (gelu, gelu_new, relu)")),
        };
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
            ("type_vocab_size", raw.type_vocab_size),
            ("embedding_size", raw.embedding_size.unwrap_or(raw.hidden_size)),
        ] {
            if v == 0 {
                return file_err(P, format!("{name} must be positive"));
            }
        }
        // A corrupt layer count would otherwise make loading enumerate billions of tensor names
        // before the checkpoint could contradict it (the largest BERTs have 48 layers).
        if raw.num_hidden_layers > MAX_LAYERS {
            return file_err(P, format!("num_hidden_layers = {} is more than engram loads ({MAX_LAYERS})", raw.num_hidden_layers));
        }
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return file_err(P, format!("hidden_size {} is not a multiple of num_attention_heads {}", raw.hidden_size, raw.num_attention_heads));
        }
        for (name, p) in [("hidden_dropout_prob", raw.hidden_dropout_prob), ("attention_probs_dropout_prob", raw.attention_probs_dropout_prob)] {
            if !(0.0..1.0).contains(&p) {
                return file_err(P, format!("{name} = {p} must be in [0, 1)"));
            }
        }
        if raw.layer_norm_eps.is_nan() || raw.layer_norm_eps <= 0.0 {
            return file_err(P, format!("layer_norm_eps = {} must be positive", raw.layer_norm_eps));
        }
        let mut id2label = Vec::new();
        if let Some(map) = &raw.id2label {
            let mut pairs = Vec::new();
            for (k, v) in map {
                match k.parse::<usize>() {
                    Ok(i) => pairs.push((i, v.clone())),
                    Err(_) => return file_err(P, format!("id2label key \"{k}\" is not a class index")),
                }
            }
            pairs.sort();
            if pairs.iter().enumerate().any(|(i, (k, _))| i != *k) {
                return file_err(P, "id2label keys must be 0..N without gaps");
            }
            id2label = pairs.into_iter().map(|(_, v)| v).collect();
        }
        if let (Some(n), false) = (raw.num_labels, id2label.is_empty()) {
            if n != id2label.len() {
                return file_err(P, format!("num_labels {n} disagrees with id2label ({} labels)", id2label.len()));
            }
        }
        if family == Family::Roberta {
            let pad = raw.pad_token_id.unwrap_or(1);
            if pad < 0 || pad as usize + 2 >= raw.max_position_embeddings {
                return file_err(P, format!("pad_token_id = {pad} leaves no positions: RoBERTa's position ids start at pad_token_id + 1 (max_position_embeddings = {})", raw.max_position_embeddings));
            }
        }
        Ok(BertConfig {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            embedding_size: if matches!(family, Family::Electra | Family::Albert) { raw.embedding_size.unwrap_or(raw.hidden_size) } else { raw.hidden_size },
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            hidden_dropout_prob: raw.hidden_dropout_prob,
            attention_probs_dropout_prob: raw.attention_probs_dropout_prob,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id: raw.pad_token_id.unwrap_or(if family == Family::Roberta { 1 } else { 0 }),
            initializer_range: raw.initializer_range,
            classifier_dropout: raw.classifier_dropout,
            id2label,
            architectures: raw.architectures.unwrap_or_default(),
            raw: value,
        })
    }

    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The most tokens an input may have: the position table's rows, less RoBERTa's padding
    /// offset (positions start at pad_token_id + 1: 514 rows hold 512 tokens).
    pub fn max_tokens(&self) -> usize {
        match self.family {
            Family::Roberta => self.max_position_embeddings.saturating_sub(self.pad_token_id.max(0) as usize + 1),
            _ => self.max_position_embeddings,
        }
    }

    /// The transformers class name prefix: `Bert`, `DistilBert`, `Roberta`, `XLMRoberta`, `Electra` or `Albert`.
    pub fn class_prefix(&self) -> &'static str {
        match (self.family, self.raw.get("model_type").and_then(|m| m.as_str())) {
            (Family::DistilBert, _) => "DistilBert",
            (Family::Roberta, Some("xlm-roberta")) => "XLMRoberta",
            (Family::Roberta, _) => "Roberta",
            (Family::Bert, _) => "Bert",
            (Family::Electra, _) => "Electra",
            (Family::Albert, _) => "Albert",
        }
    }
}

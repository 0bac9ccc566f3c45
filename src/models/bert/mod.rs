//! BERT as Hugging Face defines it: `BertModel` (embeddings, encoder, pooler) and the
//! sequence- and token-classification heads, loaded from an HF model directory by HF names;
//! DistilBERT and RoBERTa / XLM-R checkpoints load into the same model (names translated, see
//! `model.rs`; what differs is in `config::Family`).

pub mod config;
pub mod model;
pub mod weights;

pub use config::{Activation, BertConfig, Family};
pub use model::{sentence_config, Bert, Head, LoadReport, Pooling, Precision};

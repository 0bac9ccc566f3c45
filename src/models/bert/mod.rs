//! BERT as Hugging Face defines it: `BertModel` (embeddings, encoder, pooler) and the
//! sequence- and token-classification heads, loaded from an HF model directory by HF names.

pub mod config;
pub mod model;
pub mod weights;

pub use config::{Activation, BertConfig};
pub use model::{sentence_config, Bert, Head, LoadReport, Pooling};

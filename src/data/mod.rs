//! Text in: tokenization and batching.

pub mod tokenize;

pub use tokenize::{Batch, BertTokenizer};

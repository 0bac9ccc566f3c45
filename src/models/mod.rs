//! Models built from the ops: BERT (Hugging Face layout and names).

pub mod bert;

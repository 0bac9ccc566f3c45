//! The trainer: fine-tuning BERT checkpoints for sequence, pair, multi-label and token
//! classification and for regression, with
//! evaluation, early stopping, HF-format checkpoints and exact resume.

pub mod data;
pub mod metrics;
pub mod plot;
pub mod trainer;
pub mod windows;
pub mod card;
pub mod words;

pub use data::{load_classification, load_sequences, load_token_classification, Example, Target, TargetKind};
pub use words::{Aggregation, TagOptions};
pub use trainer::{evaluate_dir, finetune, ClassWeights, EvalOptions, precision_flag, predict_dir, Entity, FinetuneArgs, OptimizerKind, Output, PredictOptions, Prediction, Predictor, Probs, Task};

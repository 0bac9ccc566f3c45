//! Context memory beyond the window: recurrent memory tokens (after the Recurrent Memory
//! Transformer, Bulatov et al. 2022).
//!
//! A long input is cut into segments of at most `segment_len` text tokens. Each segment is
//! encoded as `[CLS] [MEM]×m tokens [SEP]`: the word embeddings at the m [MEM] positions are
//! replaced by the memory — the learned `memory.embeddings (m, C)` for an input's first
//! segment, afterwards the encoder's output states at the [MEM] positions of the segment before.
//! The last segment's [CLS] feeds the task head (pooler + classifier). All of it is ordinary ops
//! on one tape, so the loss backpropagates through every segment (or, with `bptt = K`, through
//! the last K: earlier segments run on a no-grad tape, dropout still on).
//!
//! Batching: inputs of a batch may need different numbers of segments. They are right-aligned —
//! every input's last segment is at the last step — and sorted by segment count (longest
//! first), so the inputs active at any step are a prefix of the batch and memory rows carry over
//! by `narrow`/`concat` with no gather. Inputs that start late take the learned initial memory
//! at their first step. Logits come back in the caller's order.
//!
//! The same segmenter gives the chunk-and-average baseline (`Mode::ChunkMean`, no memory):
//! every segment is classified on its own and an input's logits are the mean over its segments.
//!
//! Saved beside an HF model dir as `memory.json` (this config) and `memory.safetensors` (the
//! memory embeddings), so `model.safetensors` stays a plain BERT that transformers loads.

pub mod recall;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::BertTokenizer;
use crate::error::{file_err, Error, Result};
use crate::models::bert::weights::{read_safetensors, write_safetensors};
use crate::models::bert::Bert;
use crate::ops;
use crate::tensor::Tensor;
use crate::util::{write_atomic, Rng};
use crate::Tape;

/// The parameter name of the memory embeddings (in `Bert::params` and `memory.safetensors`).
pub const MEMORY_PARAM: &str = "memory.embeddings";
pub const CONFIG_FILE: &str = "memory.json";
pub const WEIGHTS_FILE: &str = "memory.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Recurrent memory tokens carried across segments.
    Memory,
    /// Baseline: each segment classified alone, logits averaged over an input's segments.
    ChunkMean,
}

/// How long inputs are cut and carried (`memory.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    pub mode: Mode,
    /// m, memory tokens per segment (0 for `ChunkMean`).
    pub memory_tokens: usize,
    /// Text tokens per segment; a segment is `segment_len + memory_tokens + 2` positions.
    pub segment_len: usize,
    /// Backpropagate through the last K segments only (`None`: all of them).
    #[serde(default)]
    pub bptt: Option<usize>,
    /// Inputs needing more segments than this are an error, not a silent cut.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
}

fn default_max_segments() -> usize {
    64
}

impl MemoryConfig {
    pub fn memory(memory_tokens: usize, segment_len: usize, bptt: Option<usize>) -> Self {
        MemoryConfig { mode: Mode::Memory, memory_tokens, segment_len, bptt, max_segments: default_max_segments() }
    }

    pub fn chunk_mean(segment_len: usize) -> Self {
        MemoryConfig { mode: Mode::ChunkMean, memory_tokens: 0, segment_len, bptt: None, max_segments: default_max_segments() }
    }

    /// Positions one segment takes in the encoder.
    pub fn window(&self) -> usize {
        self.segment_len + self.memory_tokens + 2
    }

    /// Checks against a model: the window fits its position table, the mode and m agree.
    pub fn validate(&self, bert: &Bert) -> Result<()> {
        let bad = |d: String| Err(Error::Value { op: "memory", detail: d });
        if self.segment_len == 0 || self.max_segments == 0 {
            return bad("segment length and maximum segments must be at least 1".into());
        }
        if self.bptt == Some(0) {
            return bad("--bptt must be at least 1 segment".into());
        }
        // The memory is written over word embeddings: it must be as wide as the hidden states.
        if self.mode == Mode::Memory && bert.config.embedding_size != bert.config.hidden_size {
            return bad(format!(
                "memory tokens need embeddings as wide as the hidden states; this model's are {} wide, its hidden states {} (ELECTRA's embeddings_project)",
                bert.config.embedding_size, bert.config.hidden_size
            ));
        }
        match (self.mode, self.memory_tokens) {
            (Mode::Memory, 0) => return bad("the memory model needs at least one memory token".into()),
            (Mode::ChunkMean, m) if m > 0 => return bad("chunk-and-average uses no memory tokens".into()),
            _ => {}
        }
        if self.window() > bert.config.max_tokens() {
            return bad(format!(
                "a segment of {} text + {} memory + 2 special tokens exceeds the model's {} positions (max_position_embeddings = {})",
                self.segment_len, self.memory_tokens, bert.config.max_tokens(), bert.config.max_position_embeddings
            ));
        }
        Ok(())
    }
}

/// The memory config saved in `dir`, if any.
pub fn read_config(dir: &Path) -> Result<Option<MemoryConfig>> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::File { path: path.display().to_string(), detail: format!("cannot read: {e}") })?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::File { path: path.display().to_string(), detail: format!("not a valid memory config: {e}") })
}

/// Give `bert` the memory parameter of `cfg`: loaded from `dir/memory.safetensors` when `dir`
/// holds a memory model with the same number of memory tokens, else freshly initialised as in
/// RMT — normal with the standard deviation of the word embeddings — from `seed`.
/// Returns whether it was loaded.
pub fn attach(bert: &mut Bert, cfg: &MemoryConfig, dir: &Path, seed: u64) -> Result<bool> {
    cfg.validate(bert)?;
    bert.params.remove(MEMORY_PARAM);
    if cfg.mode == Mode::ChunkMean {
        return Ok(false);
    }
    let c = bert.config.hidden_size;
    let shape = [cfg.memory_tokens, c];
    let device = bert.device();
    let stored = match read_config(dir)? {
        Some(saved) if saved.memory_tokens == cfg.memory_tokens => {
            let path = dir.join(WEIGHTS_FILE);
            let mut t = read_safetensors(&path)?;
            match t.remove(MEMORY_PARAM) {
                Some(m) if m.shape() == shape => Some(m),
                Some(m) => return file_err(&path, format!("{MEMORY_PARAM} has shape {:?}, memory.json implies {shape:?}", m.shape())),
                None => return file_err(&path, format!("has no tensor {MEMORY_PARAM}")),
            }
        }
        _ => None,
    };
    let loaded = stored.is_some();
    let mem = match stored {
        Some(m) => m,
        None => {
            let w = bert.word_embedding_values()?;
            let mean = w.iter().sum::<f64>() / w.len() as f64;
            let std = (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / w.len() as f64).sqrt();
            let mut rng = Rng::new(seed ^ 0x6d65_6d6f_7279);
            Tensor::from_vec(rng.normal_vec(shape[0] * c).into_iter().map(|x| (x * std) as f32).collect::<Vec<f32>>(), &shape)?
        }
    };
    bert.params.insert(MEMORY_PARAM.to_string(), mem.to_device(device)?.requires_grad());
    Ok(loaded)
}

/// Write `memory.json` and (memory mode) `memory.safetensors` into `dir`.
pub fn save(bert: &Bert, cfg: &MemoryConfig, dir: &Path) -> Result<()> {
    if let Some(m) = bert.params.get(MEMORY_PARAM) {
        let mut t = BTreeMap::new();
        t.insert(MEMORY_PARAM.to_string(), m.clone());
        write_safetensors(dir.join(WEIGHTS_FILE), &t, None)?;
    }
    write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(cfg).expect("config serialises").as_bytes())
}

/// One piece of a long input: a dialogue turn, a line, or a whole document; `type_id` 1 marks
/// the candidate response of a dialogue pair.
pub struct Unit {
    pub ids: Vec<u32>,
    pub type_id: i64,
}

/// The units of an input: every non-empty line of `text` (one dialogue turn per line), then
/// `text_pair` (the candidate response) if any.
pub fn units(tok: &BertTokenizer, text: &str, text_pair: Option<&str>) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push(Unit { ids: tok.ids_untruncated(line)?, type_id: 0 });
    }
    if let Some(p) = text_pair {
        out.push(Unit { ids: tok.ids_untruncated(p)?, type_id: 1 });
    }
    Ok(out)
}

/// Pack units into segments of at most `cap` tokens: a unit that fits in the current segment
/// joins it, one that fits in a segment of its own starts a new one (turns stay whole), a longer
/// one streams across segments. Always at least one (possibly empty) segment.
pub fn pack(units: &[Unit], cap: usize) -> Vec<Vec<(u32, i64)>> {
    let mut segs: Vec<Vec<(u32, i64)>> = Vec::new();
    let mut cur: Vec<(u32, i64)> = Vec::new();
    for u in units {
        let toks = u.ids.iter().map(|&i| (i, u.type_id));
        if cur.len() + u.ids.len() <= cap {
            cur.extend(toks);
        } else if u.ids.len() <= cap {
            segs.push(std::mem::take(&mut cur));
            cur.extend(toks);
        } else {
            for t in toks {
                if cur.len() == cap {
                    segs.push(std::mem::take(&mut cur));
                }
                cur.push(t);
            }
        }
    }
    if !cur.is_empty() || segs.is_empty() {
        segs.push(cur);
    }
    segs
}

/// One step of a segmented batch: the segments of the first `ids.shape()[0]` inputs (in sorted
/// order), `[CLS] [MEM]×m tokens [SEP]` padded to the step's longest.
pub struct Step {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Inputs whose first segment is this step (the last `joining` rows).
    pub joining: usize,
}

/// A batch of long inputs cut into right-aligned segment steps.
pub struct Segments {
    pub steps: Vec<Step>,
    /// Sorted position → caller's index.
    pub order: Vec<usize>,
    /// Segments per input, in the caller's order.
    pub counts: Vec<usize>,
    /// Real tokens (text, special and memory) over all segments.
    pub tokens: usize,
}

impl Segments {
    pub fn batch_size(&self) -> usize {
        self.order.len()
    }
}

/// Segment a batch of inputs (each a list of units). `what` names the source in errors.
pub fn segment(tok: &BertTokenizer, cfg: &MemoryConfig, inputs: &[Vec<Unit>], what: &str) -> Result<Segments> {
    if inputs.is_empty() {
        return Err(Error::Value { op: "memory", detail: format!("{what}: nothing to segment (empty batch)") });
    }
    let (cls, sep, pad) = tok.cls_sep_pad()?;
    let (cls, sep, pad) = (cls as i64, sep as i64, pad as i64);
    let packed: Vec<Vec<Vec<(u32, i64)>>> = inputs.iter().map(|u| pack(u, cfg.segment_len)).collect();
    for (i, p) in packed.iter().enumerate() {
        if p.len() > cfg.max_segments {
            let n: usize = p.iter().map(|s| s.len()).sum();
            return Err(Error::Value {
                op: "memory",
                detail: format!(
                    "{what}: input {} has {n} tokens = {} segments of {}; the limit is {} (finetune --max-segments raises it; a trained model keeps its limit in memory.json)",
                    i + 1,
                    p.len(),
                    cfg.segment_len,
                    cfg.max_segments
                ),
            });
        }
    }
    let counts: Vec<usize> = packed.iter().map(|p| p.len()).collect();
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i])); // stable: ties keep the caller's order
    let n_steps = counts[order[0]];
    let m = cfg.memory_tokens;
    let mut steps = Vec::with_capacity(n_steps);
    let mut tokens = 0;
    let mut prev_active = 0;
    for s in 0..n_steps {
        // Input i is active at step s when its count ≥ n_steps - s (a prefix of `order`).
        let active = order.iter().take_while(|&&i| counts[i] >= n_steps - s).count();
        let segs: Vec<&Vec<(u32, i64)>> = order[..active].iter().map(|&i| &packed[i][s - (n_steps - counts[i])]).collect();
        let t = segs.iter().map(|g| g.len()).max().unwrap_or(0) + m + 2;
        let (mut ids, mut types, mut mask) = (Vec::with_capacity(active * t), Vec::with_capacity(active * t), Vec::with_capacity(active * t));
        for g in &segs {
            let real = g.len() + m + 2;
            tokens += real;
            ids.push(cls);
            ids.extend(std::iter::repeat_n(pad, m));
            ids.extend(g.iter().map(|&(id, _)| id as i64));
            ids.push(sep);
            ids.extend(std::iter::repeat_n(pad, t - real));
            types.extend(std::iter::repeat_n(0, m + 1));
            types.extend(g.iter().map(|&(_, ty)| ty));
            types.push(g.last().map(|&(_, ty)| ty).unwrap_or(0));
            types.extend(std::iter::repeat_n(0, t - real));
            mask.extend(std::iter::repeat_n(1, real));
            mask.extend(std::iter::repeat_n(0, t - real));
        }
        steps.push(Step {
            input_ids: Tensor::from_ids(ids, &[active, t])?,
            token_type_ids: Tensor::from_ids(types, &[active, t])?,
            attention_mask: Tensor::from_ids(mask, &[active, t])?,
            joining: active - prev_active,
        });
        prev_active = active;
    }
    Ok(Segments { steps, order, counts, tokens })
}

/// What a forward over segments gives back.
pub struct Output {
    /// `(B, L)` in the caller's order.
    pub logits: Tensor,
    /// Per input (caller's order), the mean L2 norm of its memory states after each of its
    /// segments (memory mode, when asked for).
    pub memory_norms: Option<Vec<Vec<f64>>>,
}

/// The classification logits of a segmented batch (see the module docs). `train` turns dropout
/// on; with `bptt = K` the steps before the last K run on `tape.frozen()`.
pub fn forward(bert: &Bert, cfg: &MemoryConfig, tape: &Tape, seg: &Segments, train: bool, norms: bool) -> Result<Output> {
    let device = bert.device();
    let (m, c) = (cfg.memory_tokens, bert.config.hidden_size);
    let n_steps = seg.steps.len();
    let first_grad_step = cfg.bptt.map_or(0, |k| n_steps.saturating_sub(k));
    let frozen = tape.frozen();
    let mut memory: Option<Tensor> = None; // (B_prev, m, C)
    let mut chunk_logits: Vec<Tensor> = Vec::new();
    let mut last_hidden = None;
    let mut norm_log: Vec<Vec<f64>> = vec![Vec::new(); seg.batch_size()];
    for (s, step) in seg.steps.iter().enumerate() {
        let t = if s < first_grad_step { &frozen } else { tape };
        let ids = step.input_ids.to_device(device)?;
        let (b, len) = (ids.shape()[0], ids.shape()[1]);
        let words = bert.words(t, &ids)?; // (B_s, T, C)
        let x = if cfg.mode == Mode::Memory {
            let mem_in = {
                let fresh = if step.joining > 0 {
                    let mem_ids = Tensor::from_ids((0..step.joining * m).map(|i| (i % m) as i64).collect(), &[step.joining, m])?.to_device(device)?;
                    let table = bert.params.get(MEMORY_PARAM).ok_or_else(|| Error::Autograd(format!("memory: no parameter {MEMORY_PARAM} (attach it first)")))?;
                    Some(ops::embedding(t, &mem_ids, table, None)?)
                } else {
                    None
                };
                match (memory.take(), fresh) {
                    (Some(prev), Some(f)) => ops::concat(t, &[&prev, &f], 0)?,
                    (Some(prev), None) => prev,
                    (None, Some(f)) => f,
                    (None, None) => unreachable!("the first step has every active input joining"),
                }
            };
            let cls = ops::narrow(t, &words, 1, 0, 1)?;
            let rest = ops::narrow(t, &words, 1, 1 + m, len - 1 - m)?;
            ops::concat(t, &[&cls, &mem_in, &rest], 1)?
        } else {
            words
        };
        let hidden = bert.encode_embeds(t, &x, &step.token_type_ids, &step.attention_mask, train)?;
        if cfg.mode == Mode::Memory {
            let mem_out = ops::narrow(t, &hidden, 1, 1, m)?;
            if norms {
                let v = mem_out.to_f64_vec();
                for (row, &i) in v.chunks(m * c).zip(&seg.order) {
                    let per_token: f64 = row.chunks(c).map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt()).sum::<f64>() / m as f64;
                    norm_log[i].push(per_token);
                }
            }
            memory = Some(mem_out);
        } else {
            chunk_logits.push(bert.head(t, &hidden, train)?);
        }
        debug_assert_eq!(b, seg.steps[..=s].iter().map(|st| st.joining).sum::<usize>());
        last_hidden = Some(hidden);
    }
    let sorted = match cfg.mode {
        Mode::Memory => bert.head(tape, last_hidden.as_ref().expect("at least one step"), train)?,
        Mode::ChunkMean => {
            // Mean over each input's segments: (B, ΣB_s) averaging matrix times the stacked chunk logits.
            let parts: Vec<&Tensor> = chunk_logits.iter().collect();
            let all = ops::concat(tape, &parts, 0)?;
            let rows: Vec<usize> = seg.steps.iter().map(|st| st.input_ids.shape()[0]).collect();
            let total: usize = rows.iter().sum();
            let bsz = seg.batch_size();
            let mut a = vec![0f64; bsz * total];
            let mut off = 0;
            for &r in &rows {
                for j in 0..r {
                    a[j * total + off + j] = 1.0 / seg.counts[seg.order[j]] as f64;
                }
                off += r;
            }
            let a = Tensor::from_vec(a, &[bsz, total])?.to_dtype(all.dtype())?.to_device(device)?;
            ops::matmul(tape, &a, &all)?
        }
    };
    // Back to the caller's order: row `inverse[i]` of `sorted` is input i.
    let mut inverse = vec![0i64; seg.batch_size()];
    for (pos, &i) in seg.order.iter().enumerate() {
        inverse[i] = pos as i64;
    }
    let inverse = Tensor::from_ids(inverse, &[seg.batch_size()])?.to_device(device)?;
    let logits = ops::embedding(tape, &inverse, &sorted, None)?;
    Ok(Output { logits, memory_norms: (norms && cfg.mode == Mode::Memory).then_some(norm_log) })
}

/// Segment and run `texts` (with optional candidate responses) for prediction.
pub fn predict_logits(bert: &Bert, cfg: &MemoryConfig, tok: &BertTokenizer, inputs: &[(String, Option<String>)], norms: bool) -> Result<Output> {
    let units: Vec<Vec<Unit>> = inputs.iter().map(|(t, p)| units(tok, t, p.as_deref())).collect::<Result<_>>()?;
    let seg = segment(tok, cfg, &units, "input")?;
    forward(bert, cfg, &bert.inference_tape(), &seg, false, norms)
}


//! Tokenization with the `tokenizers` crate from a model's `tokenizer.json`: dynamic padding to
//! the longest sequence of a batch, truncation to a maximum length (longest-first for pairs),
//! token type ids for pairs, and character offsets and word ids kept for token-level labels.
//! A checkpoint saved with only its slow tokenizer's files (`vocab.txt`; `vocab.json` +
//! `merges.txt`) gets the fast tokenizer transformers' converters would build from them.

use std::path::{Path, PathBuf};

use tokenizers::{EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, PreTokenizerWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{file_err, Result};
use crate::tensor::{Device, Tensor};

/// A model's tokenizer, configured for engram's batching (whatever padding and truncation the
/// file itself asks for is replaced).
pub struct BertTokenizer {
    inner: Tokenizer,
    /// For pre-split words (token classification) with a byte-level BPE that does not add a
    /// prefix space (RoBERTa): the same tokenizer with `add_prefix_space`, so every word is
    /// encoded as a word start — what transformers requires for `is_split_into_words`.
    words: Option<Tokenizer>,
    /// The same tokenizer without padding or truncation (long inputs cut into segments).
    raw: Tokenizer,
    /// The pre-split words' tokenizer without padding or truncation (tokens per word, for
    /// cutting long token-classification inputs into windows).
    words_raw: Tokenizer,
    path: PathBuf,
    max_len: usize,
}

/// A tokenized, padded batch. Tensors are `(B, T)` i64 on the host until moved.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Character offsets `(start, end)` of each token in its text ((0, 0) for special tokens and
    /// padding); for pairs, offsets of the second segment refer to the second text.
    pub offsets: Vec<Vec<(usize, usize)>>,
    /// Index of the word each token came from (None for special tokens and padding).
    pub word_ids: Vec<Vec<Option<u32>>>,
    /// Which sequence of `type_ids` a token belongs to (0 or 1), None for padding/special.
    pub sequence_ids: Vec<Vec<Option<usize>>>,
    /// Whether the input was longer than the maximum length and was cut.
    pub truncated: Vec<bool>,
}

impl Batch {
    pub fn batch_size(&self) -> usize {
        self.input_ids.shape()[0]
    }
    pub fn seq_len(&self) -> usize {
        self.input_ids.shape()[1]
    }
    /// Real (non-padding) tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.attention_mask.to_f64_vec().iter().filter(|&&m| m != 0.0).count()
    }
    /// The id tensors on `device` (offsets stay on the host).
    pub fn to_device(&self, device: Device) -> Result<Batch> {
        Ok(Batch {
            input_ids: self.input_ids.to_device(device)?,
            token_type_ids: self.token_type_ids.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
            ..self.clone()
        })
    }
}

/// The `tokenizer.json` text of a model directory that has none, built from the slow
/// tokenizer's files as transformers' `BertConverter` / `RobertaConverter` do: WordPiece over
/// `vocab.txt` behind the BERT normalizer (`do_lower_case`, `strip_accents`,
/// `tokenize_chinese_chars` from `tokenizer_config.json`) and pre-tokenizer, `[CLS] A [SEP] B
/// [SEP]`; or byte-level BPE over `vocab.json` + `merges.txt` (`add_prefix_space` from the config),
/// `<s> A </s></s> B </s>`. Special tokens are the config's (else the usual ones).
pub fn tokenizer_json_from_vocab(dir: &Path) -> Result<String> {
    use tokenizers::models::{bpe::BPE, wordpiece::WordPiece};
    use tokenizers::{decoders, normalizers::BertNormalizer, pre_tokenizers, processors, AddedToken};
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => serde_json::from_str(&t).or_else(|e| file_err(&cfg_path, format!("not valid JSON: {e}")))?,
        Err(_) => serde_json::json!({}),
    };
    // A special token's text: a string, or an AddedToken object's "content".
    let special = |key: &str, default: &str| -> String {
        match cfg.get(key) {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(v) => v.get("content").and_then(|c| c.as_str()).unwrap_or(default).to_string(),
            None => default.to_string(),
        }
    };
    let flag = |key: &str| cfg.get(key).and_then(|v| v.as_bool());
    let (vocab, json, merges) = (dir.join("vocab.txt"), dir.join("vocab.json"), dir.join("merges.txt"));
    let text = |p: &Path| p.to_str().map(str::to_string).ok_or_else(|| crate::error::Error::File { path: p.display().to_string(), detail: "path is not UTF-8".into() });
    let mut tok = if vocab.is_file() {
        let (cls, sep, unk, pad, mask) = (special("cls_token", "[CLS]"), special("sep_token", "[SEP]"), special("unk_token", "[UNK]"), special("pad_token", "[PAD]"), special("mask_token", "[MASK]"));
        let wp = WordPiece::from_file(&text(&vocab)?).unk_token(unk.clone()).build().or_else(|e| file_err(&vocab, format!("not a usable WordPiece vocabulary: {e}")))?;
        let vocab_map = tokenizers::Model::get_vocab(&wp);
        let id = |t: &str| vocab_map.get(t).copied().ok_or_else(|| crate::error::Error::File { path: vocab.display().to_string(), detail: format!("has no {t} token") });
        let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
        let mut tok = Tokenizer::new(wp);
        let lower = flag("do_lower_case").unwrap_or(true);
        tok.with_normalizer(Some(BertNormalizer::new(true, flag("tokenize_chinese_chars").unwrap_or(true), flag("strip_accents"), lower)));
        tok.with_pre_tokenizer(Some(pre_tokenizers::bert::BertPreTokenizer));
        tok.with_post_processor(Some(processors::bert::BertProcessing::new((sep.clone(), sep_id), (cls.clone(), cls_id))));
        tok.with_decoder(Some(decoders::wordpiece::WordPiece::default()));
        let specials: Vec<AddedToken> = [pad, unk, cls, sep, mask].into_iter().filter(|t| id(t).is_ok()).map(|t| AddedToken::from(t, true)).collect();
        tok.add_special_tokens(&specials);
        tok
    } else if json.is_file() && merges.is_file() {
        let (cls, sep, unk, pad, mask) = (special("cls_token", "<s>"), special("sep_token", "</s>"), special("unk_token", "<unk>"), special("pad_token", "<pad>"), special("mask_token", "<mask>"));
        // Ids must be 0..n: the tokenizers library builds (and serialises) vocabularies by id,
        // so a stray huge id would run it through every number below it.
        let parsed: serde_json::Value = std::fs::read_to_string(&json)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .or_else(|e| file_err(&json, format!("not valid JSON: {e}")))?;
        let Some(entries) = parsed.as_object() else { return file_err(&json, "is not a JSON object of token → id") };
        if let Some((k, v)) = entries.iter().find(|(_, v)| v.as_u64().is_none_or(|i| (i as usize) >= entries.len())) {
            return file_err(&json, format!("token {k:?} has id {v}: ids must be integers from 0 to {} (the vocabulary's size − 1)", entries.len().saturating_sub(1)));
        }
        let bpe = BPE::from_file(&text(&json)?, &text(&merges)?).build().or_else(|e| file_err(&json, format!("with {} is not a usable BPE vocabulary: {e}", merges.display())))?;
        let vocab_map = tokenizers::Model::get_vocab(&bpe);
        let id = |t: &str| vocab_map.get(t).copied().ok_or_else(|| crate::error::Error::File { path: json.display().to_string(), detail: format!("has no {t} token") });
        let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
        let prefix = flag("add_prefix_space").unwrap_or(false);
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizers::byte_level::ByteLevel::new(prefix, true, true)));
        tok.with_post_processor(Some(processors::roberta::RobertaProcessing::new((sep.clone(), sep_id), (cls.clone(), cls_id)).add_prefix_space(prefix).trim_offsets(true)));
        tok.with_decoder(Some(decoders::byte_level::ByteLevel::default()));
        let specials: Vec<AddedToken> = [cls, pad, sep, unk].into_iter().filter(|t| id(t).is_ok()).map(|t| AddedToken::from(t, true)).collect();
        tok.add_special_tokens(&specials);
        if id(&mask).is_ok() {
            tok.add_special_tokens(&[AddedToken::from(mask, true).lstrip(true)]);
        }
        tok
    } else {
        return file_err(dir.join("tokenizer.json"), "not found, and no slow tokenizer's vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE) to build it from");
    };
    tok.with_padding(None);
    tok.to_string(false).or_else(|e| file_err(dir, format!("cannot serialise the tokenizer built from its vocabulary: {e}")))
}

impl BertTokenizer {
    /// The tokenizer of a model directory: its `tokenizer.json`, else one built from the slow
    /// tokenizer's vocabulary files ([`tokenizer_json_from_vocab`]).
    pub fn from_dir(dir: impl AsRef<Path>, max_len: usize) -> Result<BertTokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if path.is_file() {
            return Self::from_file(path, max_len);
        }
        let text = tokenizer_json_from_vocab(dir)?;
        let from = if dir.join("vocab.txt").is_file() { dir.join("vocab.txt") } else { dir.join("vocab.json") };
        Self::from_text(&from, text, max_len)
    }

    /// Load `tokenizer.json`; `max_len` is the truncation length in tokens (special tokens included).
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<BertTokenizer> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return file_err(path, format!("cannot read: {e}")),
        };
        Self::from_text(path, text, max_len)
    }

    /// A tokenizer from its JSON text (`path` names where it came from, for errors).
    fn from_text(path: &Path, text: String, max_len: usize) -> Result<BertTokenizer> {
        if max_len < 2 {
            return file_err(path, format!("maximum length {max_len} leaves no room for [CLS] and [SEP]"));
        }
        // JSON first: the tokenizers library panics (instead of erring) on some malformed files,
        // e.g. a truncated byte-level decoder section. A panic it still raises becomes an error.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            return file_err(path, format!("not valid JSON: {e}"));
        }
        let mut inner = match std::panic::catch_unwind(|| text.parse::<Tokenizer>()) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return file_err(path, format!("not a usable tokenizer.json: {e}")),
            Err(_) => return file_err(path, "not a usable tokenizer.json (the tokenizers library failed on it)"),
        };
        let mut raw = inner.clone();
        raw.with_padding(None);
        if let Err(e) = raw.with_truncation(None) {
            return file_err(path, format!("cannot switch truncation off: {e}"));
        }
        let (pad_id, pad_token) = match ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t).map(|id| (id, t.to_string()))) {
            Some(p) => p,
            None => match inner.get_padding() {
                Some(p) => (p.pad_id, p.pad_token.clone()),
                None => return file_err(path, "the vocabulary has no [PAD] token and the file configures no padding"),
            },
        };
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        if let Err(e) = inner.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        })) {
            return file_err(path, format!("cannot truncate to {max_len} tokens: {e}"));
        }
        let words = match inner.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(bl)) if !bl.add_prefix_space => {
                let mut w = inner.clone();
                let mut bl = *bl;
                bl.add_prefix_space = true;
                w.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(bl)));
                Some(w)
            }
            _ => None,
        };
        let mut words_raw = words.clone().unwrap_or_else(|| raw.clone());
        words_raw.with_padding(None);
        if let Err(e) = words_raw.with_truncation(None) {
            return file_err(path, format!("cannot switch truncation off: {e}"));
        }
        Ok(BertTokenizer { inner, words, raw, words_raw, path: path.to_path_buf(), max_len })
    }

    /// Cut over-long inputs from the left (keep the end: the latest dialogue turns), as
    /// transformers' `truncation_side="left"`, instead of from the right.
    pub fn truncate_left(mut self, left: bool) -> Result<BertTokenizer> {
        let direction = if left { TruncationDirection::Left } else { TruncationDirection::Right };
        let params = TruncationParams { direction, max_length: self.max_len, strategy: TruncationStrategy::LongestFirst, stride: 0 };
        for t in std::iter::once(&mut self.inner).chain(self.words.as_mut()) {
            if let Err(e) = t.with_truncation(Some(params.clone())) {
                return file_err(&self.path, format!("cannot truncate: {e}"));
            }
        }
        Ok(self)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Special tokens a single input gets (`[CLS]` and `[SEP]`, `<s>` and `</s>`: 2).
    pub fn specials(&self) -> usize {
        self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false))
    }

    /// How many tokens (special ones aside) each of a pre-split input's words becomes, as
    /// [`encode_words`](Self::encode_words) tokenizes them, never truncated.
    pub fn word_token_counts(&self, words: &[String]) -> Result<Vec<usize>> {
        let input = EncodeInput::from(words.iter().map(|s| s.as_str()).collect::<Vec<&str>>());
        let enc = match self.words_raw.encode(input, false) {
            Ok(e) => e,
            Err(e) => return file_err(&self.path, format!("tokenization failed: {e}")),
        };
        let mut counts = vec![0usize; words.len()];
        for w in enc.get_word_ids().iter().flatten() {
            if let Some(c) = counts.get_mut(*w as usize) {
                *c += 1;
            }
        }
        Ok(counts)
    }

    /// The tokenizer must belong to the model: every id it can produce indexes the model's word
    /// embeddings (`vocab_size` rows). A tokenizer from another checkpoint is an error here,
    /// naming both files, instead of an out-of-range id deep in the first forward.
    pub fn fits(self, vocab_size: usize) -> Result<BertTokenizer> {
        let top = self.inner.get_vocab(true).into_values().max().unwrap_or(0) as usize;
        if top >= vocab_size {
            let cfg = self.path.with_file_name("config.json");
            return file_err(
                &self.path,
                format!(
                    "has token ids up to {top}, but {} gives vocab_size = {vocab_size}: the tokenizer and the model come from different checkpoints",
                    cfg.display()
                ),
            );
        }
        Ok(self)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of a whole text, no special tokens, never truncated (for segmenting long inputs).
    pub fn ids_untruncated(&self, text: &str) -> Result<Vec<u32>> {
        match self.raw.encode(text, false) {
            Ok(e) => Ok(e.get_ids().to_vec()),
            Err(e) => file_err(&self.path, format!("tokenization failed: {e}")),
        }
    }

    /// The id of a special token (`[CLS]`, `[SEP]`, `[PAD]`), or an error naming the file.
    pub fn special_id(&self, token: &str) -> Result<u32> {
        match self.inner.token_to_id(token) {
            Some(id) => Ok(id),
            None => file_err(&self.path, format!("the vocabulary has no {token} token")),
        }
    }

    /// The ids of the start, separator and padding tokens: BERT's `[CLS]`, `[SEP]`, `[PAD]`, or
    /// RoBERTa's `<s>`, `</s>`, `<pad>`.
    pub fn cls_sep_pad(&self) -> Result<(u32, u32, u32)> {
        let any = |names: [&str; 2]| match names.iter().find_map(|t| self.inner.token_to_id(t)) {
            Some(id) => Ok(id),
            None => file_err(&self.path, format!("the vocabulary has neither {} nor {}", names[0], names[1])),
        };
        Ok((any(["[CLS]", "<s>"])?, any(["[SEP]", "</s>"])?, any(["[PAD]", "<pad>"])?))
    }

    /// Tokenize single texts.
    pub fn encode(&self, texts: &[&str]) -> Result<Batch> {
        self.encode_inputs(texts.iter().map(|t| EncodeInput::from(*t)).collect())
    }

    /// Tokenize text pairs (`[CLS] a [SEP] b [SEP]`, token type 1 for the second segment).
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Batch> {
        self.encode_inputs(pairs.iter().map(|&(a, b)| EncodeInput::from((a, b))).collect())
    }

    /// Tokenize pre-split words (token classification); `word_ids` map tokens back to words.
    pub fn encode_words(&self, words: &[Vec<String>]) -> Result<Batch> {
        let tok = self.words.as_ref().unwrap_or(&self.inner);
        Self::encode_with(tok, &self.path, words.iter().map(|w| EncodeInput::from(w.iter().map(|s| s.as_str()).collect::<Vec<&str>>())).collect())
    }

    fn encode_inputs(&self, inputs: Vec<EncodeInput>) -> Result<Batch> {
        Self::encode_with(&self.inner, &self.path, inputs)
    }

    fn encode_with(tok: &Tokenizer, path: &Path, inputs: Vec<EncodeInput>) -> Result<Batch> {
        if inputs.is_empty() {
            return file_err(path, "nothing to tokenize (empty batch)");
        }
        let encs = match tok.encode_batch_char_offsets(inputs, true) {
            Ok(e) => e,
            Err(e) => return file_err(path, format!("tokenization failed: {e}")),
        };
        let (b, t) = (encs.len(), encs[0].get_ids().len());
        let (mut ids, mut types, mut mask) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        let (mut offsets, mut word_ids, mut seq_ids, mut truncated) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in &encs {
            ids.extend(e.get_ids().iter().map(|&x| x as i64));
            types.extend(e.get_type_ids().iter().map(|&x| x as i64));
            mask.extend(e.get_attention_mask().iter().map(|&x| x as i64));
            offsets.push(e.get_offsets().to_vec());
            word_ids.push(e.get_word_ids().to_vec());
            seq_ids.push((0..e.len()).map(|i| e.get_sequence_ids()[i]).collect());
            truncated.push(!e.get_overflowing().is_empty());
        }
        Ok(Batch {
            input_ids: Tensor::from_ids(ids, &[b, t])?,
            token_type_ids: Tensor::from_ids(types, &[b, t])?,
            attention_mask: Tensor::from_ids(mask, &[b, t])?,
            offsets,
            word_ids,
            sequence_ids: seq_ids,
            truncated,
        })
    }
}

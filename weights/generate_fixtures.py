"""Reference fixtures for engram's BERT tests, made with PyTorch + transformers + sentence-transformers.

    ./scripts/reference-env.sh && ./scripts/install-weights.sh
    .venv-ref/bin/python weights/generate_fixtures.py

Writes (all committed, all small):
  weights/tiny-bert/{config.json, model.safetensors, tokenizer.json}  a 2-layer random BERT with a
      3-label sequence-classification head and a small real WordPiece vocabulary (a subset of
      all-MiniLM-L6-v2's uncased vocabulary), saved by transformers' save_pretrained;
  weights/tiny-bert/reference.safetensors  its inputs, logits, loss and every parameter gradient;
  weights/minilm_reference.safetensors  all-MiniLM-L6-v2 on a padded batch of real sentences:
      input ids, mask, last hidden state (transformers) and sentence embeddings (sentence-transformers);
  weights/tiny-distilbert/{config.json, model.safetensors, tokenizer.json, reference.safetensors}
      the same for a 2-layer random DistilBERT (DistilBertForSequenceClassification, tiny-bert's
      tokenizer); its reference also holds the last hidden state (DistilBertModel).
  weights/tiny-roberta/{…}  the same for a 2-layer random RoBERTa (RobertaForSequenceClassification)
      with a small byte-level BPE tokenizer trained here on the fixture texts.
  weights/tiny-xlm-roberta/{…}  the same for XLM-R (XLMRobertaForSequenceClassification) with a
      small SentencePiece-style Unigram tokenizer (Metaspace) trained here (the Unigram trainer's
      scores vary in their last digits from run to run: regenerate the whole directory at once).
  weights/tiny-electra/{…}  the same for a 2-layer random ELECTRA discriminator
      (ElectraForSequenceClassification, tiny-bert's tokenizer) whose embeddings (24 wide) are
      narrower than its hidden states (32): the `embeddings_project` layer; token types used.
  weights/tiny-albert/{…}  the same for a 3-layer random ALBERT (AlbertForSequenceClassification,
      tiny-bert's tokenizer): one layer's weights shared by all three, embeddings 24 → 32.
Run one part: `generate_fixtures.py minilm|tiny|distilbert|roberta|xlmr|electra|albert` (default: all).
engram itself never runs Python.
"""
import json
import os
import re

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (AlbertConfig, AlbertForSequenceClassification, AutoModel, AutoTokenizer, BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
                          ElectraConfig, ElectraForSequenceClassification, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification)

ROOT = os.path.dirname(os.path.abspath(__file__))
MINILM = os.path.join(ROOT, "cache", "all-MiniLM-L6-v2")
TINY = os.path.join(ROOT, "tiny-bert")
TINY_DISTIL = os.path.join(ROOT, "tiny-distilbert")
TINY_ROBERTA = os.path.join(ROOT, "tiny-roberta")
TINY_XLMR = os.path.join(ROOT, "tiny-xlm-roberta")
TINY_ELECTRA = os.path.join(ROOT, "tiny-electra")
TINY_ALBERT = os.path.join(ROOT, "tiny-albert")

SENTENCES = [
    "The cat sat on the mat.",
    "Engram runs BERT models from safetensors checkpoints on the CPU and the GPU.",
    "Hello!",
    "A quick brown fox jumps over the lazy dog, twice.",
]
PAIRS = [
    ("how do i reset my password?", "click the link in the email."),
    ("the weather is nice today", "it is sunny and warm"),
    ("a", "b c d e f g h i j k"),
]


def minilm():
    tok = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(MINILM, device="cpu")
    emb = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)
    save_file(
        {
            "input_ids": enc["input_ids"].contiguous(),
            "attention_mask": enc["attention_mask"].contiguous(),
            "token_type_ids": enc["token_type_ids"].contiguous(),
            "last_hidden_state": out.contiguous(),
            "sentence_embedding": emb.float().contiguous(),
        },
        os.path.join(ROOT, "minilm_reference.safetensors"),
        metadata={"sentences": json.dumps(SENTENCES)},
    )
    print("minilm: hidden", tuple(out.shape), "embeddings", tuple(emb.shape))


def nudge(model):
    """Non-trivial LayerNorm and bias values (drawn in parameter order from the global RNG), so a
    swapped weight/bias cannot pass."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "layer_norm" in n or "LayerNorm" in n:
                p.add_(0.1 * torch.randn_like(p))


def tiny_vocab():
    """Special tokens, characters and their ## forms, then MiniLM's tokens for our texts."""
    full = json.load(open(os.path.join(MINILM, "tokenizer.json")))["model"]["vocab"]
    keep = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()"]
    keep += chars + ["##" + c for c in chars if c.isalnum()]
    hf = AutoTokenizer.from_pretrained(MINILM)
    texts = SENTENCES + [t for p in PAIRS for t in p] + ["the a an of to in is it and or not"]
    for t in texts:
        keep += hf.tokenize(t)
    vocab = {}
    for t in keep:
        if t in full and t not in vocab:
            vocab[t] = len(vocab)
    return vocab


def tiny():
    os.makedirs(TINY, exist_ok=True)
    vocab = tiny_vocab()
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, hidden_act="gelu", max_position_embeddings=64, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0, num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    model = BertForSequenceClassification(config)
    nudge(model)
    model.save_pretrained(TINY, safe_serialization=True)

    tk.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    encs = tk.encode_batch(PAIRS)
    enc = {
        "input_ids": torch.tensor([e.ids for e in encs]),
        "attention_mask": torch.tensor([e.attention_mask for e in encs]),
        "token_type_ids": torch.tensor([e.type_ids for e in encs]),
    }
    tk.no_padding()
    tk.save(os.path.join(TINY, "tokenizer.json"))
    labels = torch.tensor([2, 0, 1])
    model.eval()  # dropout off: the Rust side trains with dropout disabled for the comparison
    out = model(**enc, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": enc["input_ids"].contiguous(),
        "attention_mask": enc["attention_mask"].contiguous(),
        "token_type_ids": enc["token_type_ids"].contiguous(),
        "labels": labels,
        "logits": out.logits.detach().contiguous(),
        "loss": out.loss.detach().reshape(1),
    }
    for n, p in model.named_parameters():
        tensors["grad." + n] = p.grad.contiguous()
    save_file(tensors, os.path.join(TINY, "reference.safetensors"),
              metadata={"pairs": json.dumps(PAIRS)})
    print("tiny: vocab", len(vocab), "params", sum(p.numel() for p in model.parameters()), "loss", out.loss.item())


def save_reference(model, base, ids, mask, out_dir, types=None):
    """`out_dir/reference.safetensors`: inputs, labels, logits, loss, the base model's last hidden
    state and every parameter gradient (eval mode: dropout off, as the Rust side compares)."""
    labels = torch.tensor([2, 0, 1])
    model.eval()
    extra = {} if types is None else {"token_type_ids": types}
    out = model(input_ids=ids, attention_mask=mask, labels=labels, **extra)
    out.loss.backward()
    with torch.no_grad():
        hidden = base(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
    tensors = {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "labels": labels,
        "logits": out.logits.detach().contiguous(),
        "loss": out.loss.detach().reshape(1),
        "last_hidden_state": hidden.contiguous(),
    }
    for n, p in model.named_parameters():
        tensors["grad." + n] = p.grad.contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata={"pairs": json.dumps(PAIRS)})
    print(os.path.basename(out_dir) + ": params", sum(p.numel() for p in model.parameters()), "loss", out.loss.item())


def tiny_distil():
    """A random 2-layer DistilBERT with tiny-bert's tokenizer: logits, loss, every gradient."""
    import shutil
    os.makedirs(TINY_DISTIL, exist_ok=True)
    shutil.copy(os.path.join(TINY, "tokenizer.json"), os.path.join(TINY_DISTIL, "tokenizer.json"))
    tk = Tokenizer.from_file(os.path.join(TINY, "tokenizer.json"))
    vocab = tk.get_vocab()
    torch.manual_seed(1)
    config = DistilBertConfig(
        vocab_size=len(vocab), dim=32, n_layers=2, n_heads=4, hidden_dim=37, activation="gelu",
        max_position_embeddings=64, sinusoidal_pos_embds=False, pad_token_id=0, num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    model = DistilBertForSequenceClassification(config)
    nudge(model)
    model.save_pretrained(TINY_DISTIL, safe_serialization=True)
    tk.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    encs = tk.encode_batch(PAIRS)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    save_reference(model, model.distilbert, ids, mask, TINY_DISTIL)


def random_roberta(config_cls, model_cls, tk, seed, out_dir):
    """A random 2-layer RoBERTa-architecture classifier over tokenizer `tk` (pad 1, <s> 0, </s>
    2), saved with the tokenizer and its reference."""
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=tk.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, hidden_act="gelu", max_position_embeddings=66, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    model = model_cls(config)
    nudge(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tk.enable_padding(pad_id=1, pad_token="<pad>")
    encs = tk.encode_batch(PAIRS)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    tk.no_padding()
    tk.save(os.path.join(out_dir, "tokenizer.json"))
    save_reference(model, model.roberta, ids, mask, out_dir)


def tiny_roberta():
    """A random 2-layer RoBERTa with a byte-level BPE vocabulary trained on the fixture texts:
    logits, loss, last hidden state, every gradient (padding included, so the position ids'
    padding offset matters)."""
    from tokenizers import decoders, trainers
    os.makedirs(TINY_ROBERTA, exist_ok=True)
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = SENTENCES + [t for p in PAIRS for t in p] + ["the a an of to in is it and or not", "the quick brown fox is on my email"]
    tk.train_from_iterator(texts * 10, trainer)
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    random_roberta(RobertaConfig, RobertaForSequenceClassification, tk, 2, TINY_ROBERTA)


def tiny_xlmr():
    """A random 2-layer XLM-R (RoBERTa's architecture, `model_type: xlm-roberta`) with a Unigram
    tokenizer behind a Metaspace pre-tokenizer, as XLM-R's SentencePiece vocabulary is."""
    from tokenizers import decoders, trainers
    os.makedirs(TINY_XLMR, exist_ok=True)
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    texts = SENTENCES + [t for p in PAIRS for t in p] + ["the a an of to in is it and or not", "the quick brown fox is on my email"]
    tk.train_from_iterator(texts * 10, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    random_roberta(XLMRobertaConfig, XLMRobertaForSequenceClassification, tk, 3, TINY_XLMR)


def tiny_narrow(out_dir, config_cls, model_cls, base, seed, **extra):
    """A random classifier over tiny-bert's WordPiece tokenizer whose embeddings (24) are narrower
    than its hidden states (32); the reference is computed on the pairs with token types."""
    import shutil
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(TINY, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))
    tk = Tokenizer.from_file(os.path.join(TINY, "tokenizer.json"))
    vocab = tk.get_vocab()
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=len(vocab), embedding_size=24, hidden_size=32, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
        pad_token_id=0, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2}, **extra,
    )
    model = model_cls(config)
    nudge(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tk.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    encs = tk.encode_batch(PAIRS)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    types = torch.tensor([e.type_ids for e in encs])
    save_reference(model, getattr(model, base), ids, mask, out_dir, types=types)


def tiny_electra():
    """A random 2-layer ELECTRA discriminator: `embeddings_project`, the GELU head."""
    tiny_narrow(TINY_ELECTRA, ElectraConfig, ElectraForSequenceClassification, "electra", 4, num_hidden_layers=2, hidden_act="gelu")


def tiny_albert():
    """A random 3-layer ALBERT: one shared layer (so every gradient sums three uses), gelu_new,
    `embedding_hidden_mapping_in`, a tanh pooler."""
    tiny_narrow(TINY_ALBERT, AlbertConfig, AlbertForSequenceClassification, "albert", 5, num_hidden_layers=3)


if __name__ == "__main__":
    import sys
    parts = {"minilm": minilm, "tiny": tiny, "distilbert": tiny_distil, "roberta": tiny_roberta, "xlmr": tiny_xlmr, "electra": tiny_electra, "albert": tiny_albert}
    for name in sys.argv[1:] or list(parts):
        parts[name]()

"""Check that an `engram finetune` output directory loads in transformers unchanged and predicts
what `engram predict` predicts (softmax classes, a multi-label model's per-label sigmoids, a
regression model's score, or NER tags); with `--data`, also that transformers computes the loss
`engram eval` reports on that file (the loss its config's `problem_type` selects).

    python3 scripts/check_hf_export.py --model OUT_DIR --engram target/release/engram [--data F] TEXT...
"""
import argparse, json, subprocess, sys

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--engram", required=True)
ap.add_argument("--data", help="a sequence-task data file (.jsonl) to compare the loss on")
ap.add_argument("texts", nargs="+")
a = ap.parse_args()

cfg = AutoConfig.from_pretrained(a.model)
ner = cfg.architectures[0].endswith("ForTokenClassification")  # Bert… or DistilBert…
cls = AutoModelForTokenClassification if ner else AutoModelForSequenceClassification
model = cls.from_pretrained(a.model).eval()  # raises on any missing/unexpected/mismatched tensor below
# Pre-split words with a byte-level BPE (RoBERTa) need add_prefix_space, as engram encodes them.
try:
    tok = AutoTokenizer.from_pretrained(a.model, **({"add_prefix_space": True} if ner and cfg.model_type in ("roberta", "xlm-roberta") else {}))
except (TypeError, ValueError):
    # A test fixture whose tokenizer.json is not its family's kind (tiny-albert uses tiny-bert's
    # WordPiece, where AutoTokenizer expects ALBERT's Unigram): the file itself, as engram reads it.
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{a.model}/tokenizer.json", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
out = subprocess.run([a.engram, "predict", "--model", a.model, *a.texts], capture_output=True, text=True, check=True).stdout
ours = [json.loads(l) for l in out.splitlines()]
worst = 0.0
for text, o in zip(a.texts, ours):
    if ner:
        words = o["tokens"]
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            pred = model(**enc).logits.argmax(-1)[0]
        tags, seen = ["O"] * len(words), set()
        for i, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in seen:
                seen.add(w)
                tags[w] = cfg.id2label[int(pred[i])]
        assert tags == o["tags"], f"{text!r}: transformers {tags} vs engram {o['tags']}"
    elif cfg.problem_type == "multi_label_classification":
        with torch.no_grad():
            probs = model(**tok(text, return_tensors="pt")).logits.sigmoid()[0]
        labels = [cfg.id2label[i] for i in range(len(probs)) if probs[i] > 0.5]
        assert labels == o["labels"], f"{text!r}: transformers {labels} vs engram {o['labels']}"
        worst = max(worst, max(abs(float(probs[i]) - o["probs"][cfg.id2label[i]]) for i in range(len(probs))))
    elif cfg.problem_type == "regression":
        with torch.no_grad():
            score = float(model(**tok(text, return_tensors="pt")).logits[0, 0])
        worst = max(worst, abs(score - o["score"]))
    else:
        with torch.no_grad():
            probs = model(**tok(text, return_tensors="pt")).logits.softmax(-1)[0]
        label = cfg.id2label[int(probs.argmax())]
        assert label == o["label"], f"{text!r}: transformers {label} vs engram {o['label']}"
        worst = max(worst, max(abs(float(probs[i]) - o["probs"][cfg.id2label[i]]) for i in range(len(probs))))
what = "score" if cfg.problem_type == "regression" else "prob"
msg = (f"OK: {a.model} loads in transformers ({cfg.architectures[0]}, {len(cfg.id2label)} labels, "
       f"problem_type {cfg.problem_type}); {len(a.texts)} predictions identical to engram predict"
       + ("" if ner else f", max |Δ{what}| = {worst:.2e}"))
if a.data and not ner:
    # transformers' own loss for the problem_type, over the file, against engram eval's.
    rows = [json.loads(l) for l in open(a.data) if l.strip()]
    if cfg.problem_type == "multi_label_classification":
        def target(r):
            ls = r.get("labels", r.get("label"))
            ls = ls if isinstance(ls, list) else [x.strip() for x in str(ls).split(",") if x.strip()]
            return [1.0 if cfg.id2label[i] in ls else 0.0 for i in range(len(cfg.id2label))]
    elif cfg.problem_type == "regression":
        target = lambda r: [float(r["label"])]
    else:
        target = lambda r: cfg.label2id[str(r["label"])]
    total = 0.0
    for r in rows:
        enc = tok(r["text"], r.get("text_pair"), return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            total += float(model(**enc, labels=torch.tensor([target(r)])).loss)
    theirs = total / len(rows)
    ev = json.loads(subprocess.run([a.engram, "eval", "--model", a.model, "--data", a.data], capture_output=True, text=True, check=True).stdout)
    mine = ev["metrics"]["loss"]
    assert abs(theirs - mine) <= 1e-5 + 1e-4 * abs(theirs), f"loss: transformers {theirs} vs engram eval {mine}"
    msg += f"; loss on {a.data} (batch 1 in transformers) {theirs:.6f} vs engram eval {mine:.6f}"
print(msg)

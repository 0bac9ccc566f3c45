"""Check that an `engram finetune` output directory loads in transformers unchanged and predicts
what `engram predict` predicts.

    python3 scripts/check_hf_export.py --model OUT_DIR --engram target/release/engram TEXT...
"""
import argparse, json, subprocess, sys

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--engram", required=True)
ap.add_argument("texts", nargs="+")
a = ap.parse_args()

cfg = AutoConfig.from_pretrained(a.model)
ner = cfg.architectures[0].endswith("ForTokenClassification")  # Bert… or DistilBert…
cls = AutoModelForTokenClassification if ner else AutoModelForSequenceClassification
model = cls.from_pretrained(a.model).eval()  # raises on any missing/unexpected/mismatched tensor below
# Pre-split words with a byte-level BPE (RoBERTa) need add_prefix_space, as engram encodes them.
tok = AutoTokenizer.from_pretrained(a.model, **({"add_prefix_space": True} if ner and cfg.model_type in ("roberta", "xlm-roberta") else {}))
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
    else:
        with torch.no_grad():
            probs = model(**tok(text, return_tensors="pt")).logits.softmax(-1)[0]
        label = cfg.id2label[int(probs.argmax())]
        assert label == o["label"], f"{text!r}: transformers {label} vs engram {o['label']}"
        worst = max(worst, max(abs(float(probs[i]) - o["probs"][cfg.id2label[i]]) for i in range(len(probs))))
print(f"OK: {a.model} loads in transformers ({cfg.architectures[0]}, {len(cfg.id2label)} labels); "
      f"{len(a.texts)} predictions identical to engram predict" + ("" if ner else f", max |Δprob| = {worst:.2e}"))

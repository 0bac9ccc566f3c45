"""What int8 inference costs in accuracy, engram vs PyTorch, on one fine-tuned sequence-
classification model and one labelled CSV/TSV/JSONL file (`text`, optional `text_pair`, `label`):

  engram f32        `engram eval --model M --data F`
  engram int8       `engram eval --model M --data F --int8` (the encoder's linear layers in int8,
                    per-output-channel weight scales, per-token activation scales)
  PyTorch f32       transformers' AutoModelForSequenceClassification
  PyTorch int8      the same with torch.ao.quantization.quantize_dynamic on the encoder's
                    nn.Linear layers (its default qint8 config: one scale per weight tensor)
  PyTorch int8 per-channel   the same with per_channel_dynamic_qconfig (a scale per output
                    channel, as engram's weights have)

Prints accuracy for each and how many predictions int8 changes against its own engine's f32;
--json writes the numbers. Reference only: engram never imports Python.

    .venv-ref/bin/python scripts/int8_accuracy.py --model runs/rt-full --data data/cache/rt/test.csv \\
        --engram target/release/engram [--json F]
"""
import argparse
import copy
import csv
import json
import subprocess
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def read(path):
    if path.endswith(".jsonl"):
        return [json.loads(l) for l in open(path) if l.strip()]
    return list(csv.DictReader(open(path, newline=""), delimiter="\t" if path.endswith(".tsv") else ","))


def engram_run(engram, model, data, int8):
    """Accuracy from `engram eval` and the predicted labels from `engram predict` on the same rows."""
    flag = ["--int8"] if int8 else []
    t0 = time.perf_counter()
    ev = json.loads(subprocess.run([engram, "eval", "--model", model, "--data", data, *flag], capture_output=True, text=True, check=True).stdout)
    secs = time.perf_counter() - t0
    out = subprocess.run([engram, "predict", "--model", model, "--input", data, *flag], capture_output=True, text=True, check=True).stdout
    return ev["metrics"]["report"]["accuracy"], [json.loads(l)["label"] for l in out.splitlines()], secs


def torch_run(model, tok, rows, id2label):
    preds = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            chunk = rows[i : i + 64]
            pair = [r.get("text_pair") for r in chunk] if "text_pair" in chunk[0] else None
            enc = tok([r["text"] for r in chunk], pair, truncation=True, max_length=128, padding=True, return_tensors="pt")
            preds += [id2label[int(k)] for k in model(**enc).logits.argmax(-1)]
    secs = time.perf_counter() - t0
    return sum(p == str(r["label"]) for p, r in zip(preds, rows)) / len(rows), preds, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--engram", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = read(a.data)
    res = {}
    for name, int8 in [("engram f32", False), ("engram int8", True)]:
        res[name] = engram_run(a.engram, a.model, a.data, int8)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
    id2label = model.config.id2label
    res["PyTorch f32"] = torch_run(model, tok, rows, id2label)
    for name, spec in [("PyTorch int8", {torch.nn.Linear}), ("PyTorch int8 per-channel", {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})]:
        q = copy.deepcopy(model)
        base = getattr(q, q.base_model_prefix)
        base.encoder = torch.ao.quantization.quantize_dynamic(base.encoder, spec, dtype=torch.qint8)
        res[name] = torch_run(q, tok, rows, id2label)
    print(f"\n{a.model} on {a.data} ({len(rows)} examples)\n")
    print("| engine | accuracy % | predictions changed vs its f32 | wall s (eval / inference) |")
    print("|---|---|---|---|")
    out = {}
    for name, (acc, preds, secs) in res.items():
        ref = res[name.split(" ")[0] + " f32"][1]
        changed = sum(p != r for p, r in zip(preds, ref))
        out[name] = {"accuracy": acc, "changed": changed, "seconds": secs}
        print(f"| {name} | {100 * acc:.2f} | {changed} of {len(rows)} | {secs:.1f} |")
    if a.json:
        json.dump({"model": a.model, "data": a.data, "examples": len(rows), "results": out}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()

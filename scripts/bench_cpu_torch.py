"""PyTorch + transformers peer of benches/bert_cpu.rs: the same model dir, sequence length 128,
inference at batch 1 and 32 and one fine-tuning step at batch 32 (train mode, cross-entropy,
backward, clip_grad_norm_ 1.0, AdamW with no decay on biases/LayerNorm), and inference at batch 1
and 32 with the encoder's nn.Linear layers dynamically quantized to int8
(torch.ao.quantization.quantize_dynamic, its default qint8 config), and inference at batch 32 and
the training step under torch.autocast("cpu", torch.bfloat16) (transformers' --bf16), median of N after one
warm-up, on the CPU with as many threads as cores; --json writes the three medians (ms) in the
shape benches/bert_cpu.rs writes. scripts/cpu-vs-torch.sh runs both and prints the ratios.
Reference only; engram never imports Python.

    python scripts/bench_cpu_torch.py --model weights/cache/all-MiniLM-L6-v2 [--json F] [--reps 5]
"""
import argparse
import copy
import json
import os
import statistics
import time

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

SEQ = 128


def timed(reps, f):
    f()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)
    text = "the film is a quiet, patient study of grief and of the small kindnesses that get people through it, " * 12

    def batch(b):
        enc = tok([text] * b, truncation=True, max_length=SEQ, return_tensors="pt")
        assert enc["input_ids"].shape == (b, SEQ)
        return enc

    b1, b32 = batch(1), batch(32)
    y = torch.tensor([i % 2 for i in range(32)])
    model.eval()
    with torch.inference_mode():
        infer_1 = timed(a.reps, lambda: model(**b1).logits)
        infer_32 = timed(a.reps, lambda: model(**b32).logits)
    from torch.ao.quantization import quantize_dynamic

    quantized = copy.deepcopy(model)
    quantized.bert.encoder = quantize_dynamic(quantized.bert.encoder, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        int8_1 = timed(a.reps, lambda: quantized(**b1).logits)
        int8_32 = timed(a.reps, lambda: quantized(**b32).logits)
    del quantized
    # bf16 autocast, as transformers' Trainer runs --bf16 on a CPU.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_32 = timed(a.reps, lambda: model(**b32).logits)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(**b32).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    train_32 = timed(a.reps, step)

    def bf16_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(**b32).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    bf16_train_32 = timed(a.reps, bf16_step)
    rows = {
        "inference, batch 1": infer_1,
        "inference, batch 32": infer_32,
        "train step, batch 32": train_32,
        "int8 inference, batch 1": int8_1,
        "int8 inference, batch 32": int8_32,
        "bf16 inference, batch 32": bf16_32,
        "bf16 train step, batch 32": bf16_train_32,
    }
    print(f"PyTorch {torch.__version__} CPU, {torch.get_num_threads()} threads, sequence length {SEQ}, median of {a.reps}")
    for name, ms in rows.items():
        print(f"{name:<26} {ms:9.1f} ms")
    if a.json:
        json.dump(rows, open(a.json, "w"))


if __name__ == "__main__":
    main()

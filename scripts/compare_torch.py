"""engram vs PyTorch + transformers: the same fine-tuning recipe on the same real data, 3 seeds each.

    python3 scripts/compare_torch.py --model DIR --engram path/to/engram [--device cuda] [--seeds 1 2 3]

For each task (Rotten Tomatoes sentiment: accuracy; WNUT-16 NER: entity F1, conlleval semantics;
with `--tasks wnut16-types`, the same tweets as multi-label data, which entity types a tweet
mentions: micro F1 of the per-type sigmoids at 0.5, BCE loss)
it fine-tunes the model with engram (`engram finetune`) and with a PyTorch loop that follows the
same recipe step for step: same files, same label sets, same tokenizer and truncation, AdamW with
no decay on biases/LayerNorm, linear warmup (ceil(ratio · total) steps) then linear decay
(`--lr-scheduler cosine|constant|constant_with_warmup`: transformers' get_scheduler on both), global
grad-norm clip 1.0, batch 32, per-epoch dev evaluation, the best dev epoch's model scored on test,
the model's own dropout settings (hidden, attention-probability and classifier dropout 0.1) on both.
Each side draws its own head initialisation, data order and dropout masks from the seed.

--matched removes the seed noise so the engines themselves are compared: per seed, the PyTorch
model's freshly initialised head is saved (with every dropout set to 0 in its config.json) and both
engines start from that directory, and the PyTorch loop replays engram's data order (engram_order,
pinned against the Rust trainer's own test). What is left is the arithmetic of the two engines.

--bf16 runs both engines with bf16 autocast, as transformers' --bf16 does: engram `--bf16`, and
the PyTorch loop's forward passes (training and evaluation) under torch.autocast(bfloat16).

--label-all-tokens (NER) trains every sub-token of a word on its tag, a B-X word's later pieces
on I-X (run_ner's --label_all_tokens, its b_to_i_label map); --aggregation first|average|max reads
a word's tag from its first piece, the mean softmax of its pieces, or its most confident piece
(the token-classification pipeline's strategies) in both engines' dev and test scores.

--class-weights balanced (classify, ner) weighs each class's examples (each tag's words for NER)
n / (k · count) in the cross-entropy, scikit-learn's "balanced" (a label with no training example
weighs 1): engram `--class-weights balanced`, and F.cross_entropy(weight=...) in the PyTorch loop
(what a Trainer subclass overriding compute_loss does). For multilabel it is BCE's pos_weight,
negatives / positives of each label: F.binary_cross_entropy_with_logits(pos_weight=...).

Prints one table (medians of the seeds) and writes the raw numbers as JSON. Reference only: engram
never imports Python.
"""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification, get_scheduler

TASKS = {
    "rt": dict(task="classify", train="data/cache/rt/train.csv", dev="data/cache/rt/dev.csv", test="data/cache/rt/test.csv",
               metric="accuracy", epochs=3, lr=5e-5),
    "wnut16": dict(task="ner", train="data/cache/wnut16/train.conll", dev="data/cache/wnut16/dev.conll", test="data/cache/wnut16/test.conll",
                   metric="entity_f1", epochs=5, lr=5e-5),
    # Not run by default: sparse labels (60 % of tweets mention no type) need a higher lr and more
    # epochs before a type is predicted at all.
    "wnut16-types": dict(task="multilabel", train="data/cache/wnut16-types/train.jsonl", dev="data/cache/wnut16-types/dev.jsonl",
                         test="data/cache/wnut16-types/test.jsonl", metric="micro_f1", epochs=8, lr=3e-4, default=False),
}
BATCH, MAX_LEN, WARMUP, WD, CLIP = 32, 128, 0.1, 0.01, 1.0
U64 = (1 << 64) - 1


def _splitmix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def engram_order(n, seed, epoch):
    """The Rust trainer's `order(n, seed, epoch)`: Fisher-Yates driven by SplitMix64."""
    state = _splitmix(seed ^ (((epoch + 1) * 0x9E3779B97F4A7C15) & U64))
    v = list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & U64
        j = _splitmix(state) % (i + 1)
        v[i], v[j] = v[j], v[i]
    return v


# The same vectors as src/train/trainer.rs `epoch_order_is_pinned`.
assert engram_order(10, 1, 0) == [9, 5, 0, 3, 1, 2, 8, 6, 4, 7]
assert engram_order(10, 7, 3) == [4, 3, 1, 2, 8, 7, 5, 9, 0, 6]


def read_csv(path):
    with open(path, newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def read_multilabel(path):
    return [(r["text"], r["labels"]) for r in map(json.loads, open(path))]


def micro_f1(gold, pred):
    tp = sum(g and p for gr, pr in zip(gold, pred) for g, p in zip(gr, pr))
    n = sum(map(sum, pred)) + sum(map(sum, gold))
    return 2 * tp / n if n else 0.0


def read_conll(path):
    sents, words, tags = [], [], []
    for line in open(path):
        line = line.strip()
        if not line:
            if words:
                sents.append((words, tags))
            words, tags = [], []
            continue
        cols = line.split()
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        sents.append((words, tags))
    return sents


def spans(tags):
    out, open_ = [], None
    for i, t in enumerate(tags):
        p, _, ty = t.partition("-")
        if p not in ("B", "I"):
            p, ty = "O", ""
        if not (p == "I" and open_ and open_[0] == ty):
            if open_:
                out.append((open_[0], open_[1], i - 1))
            open_ = (ty, i) if p != "O" else None
    if open_:
        out.append((open_[0], open_[1], len(tags) - 1))
    return out


def entity_f1(gold, pred):
    tp = np_ = ng = 0
    for g, p in zip(gold, pred):
        gs, ps = spans(g), spans(p)
        ng += len(gs)
        np_ += len(ps)
        tp += sum(1 for s in gs if s in ps)
    prec = tp / np_ if np_ else 0.0
    rec = tp / ng if ng else 0.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def word_tag(probs, agg):
    """A word's tag index from its sub-tokens' softmax rows (a list of 1-D tensors), as the
    token-classification pipeline aggregates them (first on ties, as numpy's argmax)."""
    if agg == "first":
        return int(probs[0].argmax())
    if agg == "average":
        return int(torch.stack(probs).mean(0).argmax())
    best = max(range(len(probs)), key=lambda i: (float(probs[i].max()), -i))
    return int(probs[best].argmax())


def balanced_weights(labels, seen):
    """scikit-learn's compute_class_weight("balanced") over the labels seen in training; 1 for a
    label never seen."""
    n, k = len(seen), len(set(seen))
    return [n / (k * seen.count(l)) if seen.count(l) else 1.0 for l in labels]


def torch_run(model_dir, spec, seed, device, limit=None, matched_dir=None, bf16=False, label_all=False, agg="first", class_weights=False):
    """Fine-tune with PyTorch. With `matched_dir`, save the initial model there (dropout off) for
    engram to start from, and follow engram's data order."""
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ner = spec["task"] == "ner"
    multi = spec["task"] == "multilabel"
    if multi:
        train, dev, test = (read_multilabel(spec[k]) for k in ("train", "dev", "test"))
        labels = sorted({l for _, ls in train for l in ls})
    elif ner:
        train, dev, test = (read_conll(spec[k]) for k in ("train", "dev", "test"))
        types = sorted({t[2:] for _, ts in train for t in ts if t != "O"})
        labels = sorted({t for _, ts in train for t in ts} | {f"{p}-{t}" for t in types for p in "BI"})
    else:
        train, dev, test = (read_csv(spec[k]) for k in ("train", "dev", "test"))
        labels = sorted({l for _, l in train})
    if limit:
        train, dev, test = train[:limit], dev[:limit], test[:limit]
    lid = {l: i for i, l in enumerate(labels)}
    weight = None
    if class_weights and multi:
        # BCE's pos_weight: negatives / positives of each label (1 for a label never positive).
        pos = [sum(1 for _, ls in train if l in ls) for l in labels]
        weight = torch.tensor([(len(train) - p) / p if p else 1.0 for p in pos], dtype=torch.float32, device=device)
    elif class_weights:
        seen = [t for _, ts in train for t in ts] if ner else [l for _, l in train]
        weight = torch.tensor(balanced_weights(labels, seen), dtype=torch.float32, device=device)
    # run_ner's b_to_i_label: a B-X tag's later sub-tokens train on I-X when the labels have it.
    b_to_i = [lid.get("I-" + l[2:], i) if l.startswith("B-") else i for i, l in enumerate(labels)]
    extra = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0) if matched_dir else {}
    if multi:
        extra["problem_type"] = "multi_label_classification"
    cfg = BertConfig.from_pretrained(model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                     label2id={l: i for i, l in enumerate(labels)}, **extra)
    cls = BertForTokenClassification if ner else BertForSequenceClassification
    model = cls.from_pretrained(model_dir, config=cfg)
    if matched_dir:
        model.save_pretrained(matched_dir)
        tok.save_pretrained(matched_dir)
    model = model.to(device)

    def encode(items):
        if ner:
            enc = tok([w for w, _ in items], is_split_into_words=True, truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
            y = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
            for b, (_, tags) in enumerate(items):
                prev = None
                for i, w in enumerate(enc.word_ids(b)):
                    if w is not None and w != prev:
                        y[b, i] = lid[tags[w]]
                    elif w is not None and label_all:
                        y[b, i] = b_to_i[lid[tags[w]]]
                    prev = w
        else:
            enc = tok([t for t, _ in items], truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
            if multi:
                y = torch.tensor([[1.0 if l in ls else 0.0 for l in labels] for _, ls in items])
            else:
                y = torch.tensor([lid[l] for _, l in items])
        return {k: v.to(device) for k, v in enc.items()}, y.to(device), enc

    no_decay = lambda n: "bias" in n or "LayerNorm" in n
    groups = [
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": WD},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train) / BATCH)
    total = steps_per_epoch * spec["epochs"]
    sched = get_scheduler(spec.get("scheduler", "linear"), opt, num_warmup_steps=math.ceil(WARMUP * total), num_training_steps=total)

    def evaluate(items):
        model.eval()
        gold, pred = [], []
        with torch.no_grad():
            for i in range(0, len(items), 64):
                chunk = items[i:i + 64]
                x, y, enc = encode(chunk)
                with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                    logits = model(**x).logits.float()
                if multi:
                    gold += (y.cpu() > 0.5).tolist()
                    pred += (logits.cpu() > 0).tolist()
                    continue
                p = logits.argmax(-1).cpu()
                if ner:
                    probs = logits.softmax(-1).cpu()
                    for b, (words, tags) in enumerate(chunk):
                        pieces = {}
                        for t, w in enumerate(enc.word_ids(b)):
                            if w is not None:
                                pieces.setdefault(w, []).append(probs[b, t])
                        out = ["O"] * len(words)
                        for w, rows in pieces.items():
                            out[w] = labels[word_tag(rows, agg)]
                        gold.append(tags)
                        pred.append(out)
                else:
                    gold += y.cpu().tolist()
                    pred += p.tolist()
        model.train()
        if multi:
            return micro_f1(gold, pred)
        if ner:
            return entity_f1(gold, pred)
        return sum(int(a == b) for a, b in zip(gold, pred)) / len(gold)

    g = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    losses, norms = [], []
    model.train()
    for epoch in range(spec["epochs"]):
        perm = engram_order(len(train), seed, epoch) if matched_dir else torch.randperm(len(train), generator=g).tolist()
        for s in range(0, len(perm), BATCH):
            x, y, _ = encode([train[j] for j in perm[s:s + BATCH]])
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                if weight is None:
                    loss = model(**x, labels=y).loss
                elif multi:
                    logits = model(**x).logits.float()
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)
                else:
                    logits = model(**x).logits.float()
                    loss = torch.nn.functional.cross_entropy(logits.view(-1, len(labels)), y.view(-1), weight=weight, ignore_index=-100)
            losses.append(loss.item())
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
            opt.step()
            sched.step()
            opt.zero_grad()
        d = evaluate(dev)
        if d > best:
            best, best_state = d, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {"dev": best, "test": evaluate(test), "loss_per_step": losses, "grad_norm_per_step": norms}


def engram_run(engram, model_dir, spec, seed, device, out, limit=None, bf16=False, label_all=False, agg="first", class_weights=False):
    cmd = [engram, "finetune", "--model", model_dir, "--task", spec["task"], "--train", spec["train"], "--dev", spec["dev"],
           "--test", spec["test"], "--out", out, "--epochs", str(spec["epochs"]), "--lr", str(spec["lr"]), "--batch-size", str(BATCH),
           "--max-length", str(MAX_LEN), "--warmup-ratio", str(WARMUP), "--weight-decay", str(WD), "--max-grad-norm", str(CLIP),
           "--seed", str(seed), "--device", device, "--quiet", "--lr-scheduler", spec.get("scheduler", "linear")] + (["--bf16"] if bf16 else [])
    if spec["task"] == "ner":
        cmd += ["--aggregation", agg] + (["--label-all-tokens"] if label_all else [])
    if class_weights:
        cmd += ["--class-weights", "balanced"]
    if limit:
        cmd += ["--max-train-examples", str(limit), "--max-eval-examples", str(limit)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"engram failed: {res.stderr}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    m = json.load(open(os.path.join(out, "metrics.json")))
    steps = [l for _, l in m["loss_per_step"]]
    norms = [g for _, g in m.get("grad_norm_per_step", [])]
    return {"dev": summary["best_metric"], "test": summary["test"][spec["metric"]], "loss_per_step": steps, "grad_norm_per_step": norms}


def agreement(a, b):
    """How long two training-loss curves stay together: max |Δ| over the first 100 steps and the
    first step where they differ by more than 1e-3 (None if never)."""
    d = [abs(x - y) for x, y in zip(a, b)]
    return {"max_diff_first_100": max(d[:100], default=0.0), "first_step_over_1e-3": next((i + 1 for i, v in enumerate(d) if v > 1e-3), None), "steps": len(d)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--engram", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--tasks", nargs="+", default=[k for k, v in TASKS.items() if v.get("default", True)], choices=list(TASKS))
    ap.add_argument("--json", default="compare_torch.json")
    ap.add_argument("--limit", type=int, help="first N examples of each split (smoke runs)")
    ap.add_argument("--epochs", type=int, help="override the tasks' epoch counts")
    ap.add_argument("--lr-scheduler", default="linear", choices=["linear", "cosine", "constant", "constant_with_warmup"],
                    help="the schedule after warmup on both engines (transformers' lr_scheduler_type)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both engines (transformers' --bf16)")
    ap.add_argument("--label-all-tokens", action="store_true", help="NER: train every sub-token (run_ner's --label_all_tokens)")
    ap.add_argument("--aggregation", default="first", choices=["first", "average", "max"], help="NER: how a word's tag is read from its sub-tokens")
    ap.add_argument("--class-weights", choices=["balanced"], help="class-weighted cross-entropy on both engines (classify, ner; multilabel: pos_weight)")
    ap.add_argument("--matched", action="store_true", help="same initial head, same data order, no dropout: compare the engines, not the seeds")
    a = ap.parse_args()
    results = {}
    for name in a.tasks:
        spec = dict(TASKS[name])
        if a.epochs:
            spec["epochs"] = a.epochs
        spec["scheduler"] = a.lr_scheduler
        for seed in a.seeds:
            tdev = "cuda" if a.device == "cuda" else "cpu"
            start = f"/tmp/engram-compare-start-{name}-{seed}" if a.matched else None
            t0 = time.time()
            p = torch_run(a.model, spec, seed, tdev, a.limit, matched_dir=start, bf16=a.bf16, label_all=a.label_all_tokens, agg=a.aggregation,
                          class_weights=bool(a.class_weights))
            torch_s = time.time() - t0
            t0 = time.time()
            e = engram_run(a.engram, start or a.model, spec, seed, a.device, f"/tmp/engram-compare-{name}-{seed}", a.limit, bf16=a.bf16,
                           label_all=a.label_all_tokens, agg=a.aggregation, class_weights=bool(a.class_weights))
            engram_s = time.time() - t0
            agree = agreement(p["loss_per_step"], e["loss_per_step"])
            # Gradient norms before clipping: relative difference, step by step.
            rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(p["grad_norm_per_step"], e["grad_norm_per_step"])]
            norm_agree = {"max_rel_diff_first_100": max(rel[:100], default=0.0), "steps": len(rel)}
            results.setdefault(name, []).append({"seed": seed, "engram": e, "torch": p, "engram_s": engram_s, "torch_s": torch_s,
                                                 "matched": a.matched, "loss_agreement": agree, "grad_norm_agreement": norm_agree})
            print(f"{name} seed {seed}: engram dev {e['dev']:.4f} test {e['test']:.4f} ({engram_s:.0f} s), "
                  f"torch dev {p['dev']:.4f} test {p['test']:.4f} ({torch_s:.0f} s)"
                  + (f"; training losses: max |Δ| {agree['max_diff_first_100']:.1e} over the first 100 steps, first |Δ| > 1e-3 at step "
                     f"{agree['first_step_over_1e-3']} of {agree['steps']}; gradient norms within {norm_agree['max_rel_diff_first_100']:.1e} (relative)"
                     if a.matched else ""), flush=True)
    json.dump(results, open(a.json, "w"), indent=1)
    print("\n| task | metric | engram test (median of %d) | PyTorch test (median) | difference (points) |" % len(a.seeds))
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        e = statistics.median(r["engram"]["test"] for r in runs)
        p = statistics.median(r["torch"]["test"] for r in runs)
        print(f"| {name} | {TASKS[name]['metric']} | {100 * e:.2f} | {100 * p:.2f} | {100 * (e - p):+.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Class weights on imbalanced labels: fine-tunes all-MiniLM-L6-v2 with and without
# `--class-weights balanced` for each seed and prints the test scores of the best dev epoch's
# model, one row per run, then the medians.
#   ./scripts/class-weights.sh [--task rt-skewed|wnut16|wnut16-types] [--seeds "1 2 3"]
#                              [--weights "none balanced"] [--epochs N] [--lr X] [--report] [finetune flags...]
# --report prints the table of runs already made, training nothing.
# Tasks (data from scripts/install-data.sh):
#   rt-skewed     classify, rotten about 1 in 8 (2 epochs, lr 5e-5, best by dev macro-F1): test
#                 macro-F1, accuracy and the rare class's precision / recall / F1
#   wnut16        ner, O is most words (5 epochs, lr 5e-5): test entity precision / recall / F1
#   wnut16-types  multilabel, 60 % of tweets mention no type (4 epochs, lr 3e-4): test micro
#                 precision / recall / F1 and macro-F1 (class weights are BCE's pos_weight)
# Runs on the CPU unless `--device cuda` is among the finetune flags. Raw: runs/class-weights/.
set -euo pipefail
cd "$(dirname "$0")/.."
task=rt-skewed
seeds="1 2 3"
weights="none balanced"
epochs=""
lr=""
report=""
while [ $# -gt 0 ]; do
    case "$1" in
        --task) task="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --weights) weights="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --lr) lr="$2"; shift 2 ;;
        --report) report=1; shift ;;
        *) break ;;
    esac
done
data=$(./scripts/install-data.sh)
case "$task" in
    rt-skewed) kind=classify; ext=csv; metric=macro_f1; epochs=${epochs:-2}; lr=${lr:-5e-5} ;;
    wnut16) kind=ner; ext=conll; metric=entity_f1; epochs=${epochs:-5}; lr=${lr:-5e-5} ;;
    wnut16-types) kind=multilabel; ext=jsonl; metric=micro_f1; epochs=${epochs:-4}; lr=${lr:-3e-4} ;;
    *) echo "class-weights.sh: unknown task $task (rt-skewed, wnut16, wnut16-types)" >&2; exit 2 ;;
esac
[ -n "$report" ] || model=$(./scripts/install-weights.sh)
[ -n "$report" ] || cargo build --release --quiet
for seed in $seeds; do
    [ -z "$report" ] || break
    for w in $weights; do
        out=runs/class-weights/$task-$w-$seed
        flag=()
        [ "$w" = none ] || flag=(--class-weights "$w")
        ./target/release/engram finetune --model "$model" --task "$kind" --train "$data/$task/train.$ext" \
            --dev "$data/$task/dev.$ext" --test "$data/$task/test.$ext" --out "$out" --epochs "$epochs" --lr "$lr" \
            --batch-size 32 --warmup-ratio 0.1 --metric "$metric" --seed "$seed" --quiet "${flag[@]}" "$@" > /dev/null
        echo "$task seed $seed, class weights $w: done" >&2
    done
done
python3 - "$task" "$seeds" "$weights" <<'PY'
import json, statistics, sys
task, seeds, weights = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def scores(r):
    if task == "rt-skewed":
        rare = r["report"]["per_label"]["rotten"]
        return ["macro-F1", "accuracy", "rotten P", "rotten R", "rotten F1"], [r["report"]["macro_f1"], r["report"]["accuracy"], rare["precision"], rare["recall"], rare["f1"]]
    if task == "wnut16":
        o = r["entities"]["overall"]
        return ["entity P", "entity R", "entity F1"], [o["precision"], o["recall"], o["f1"]]
    m = r["report"]["micro"]
    return ["micro P", "micro R", "micro F1", "macro-F1"], [m["precision"], m["recall"], m["f1"], r["report"]["macro_f1"]]

rows = {}
for w in weights:
    for seed in seeds:
        m = json.load(open(f"runs/class-weights/{task}-{w}-{seed}/metrics.json"))
        names, vals = scores(next(e["test"]["metrics"] for e in m["epochs"] if "test" in e))
        if not rows:
            print(f"| {task}: class weights | seed | " + " | ".join(f"test {n}" for n in names) + " |")
            print("|---|---|" + "---|" * len(names))
        rows.setdefault(w, []).append(vals)
        print(f"| {w} | {seed} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |")
for w, rs in rows.items():
    print(f"| {w} | median | " + " | ".join(f"{100 * statistics.median(c):.2f}" for c in zip(*rs)) + " |")
PY

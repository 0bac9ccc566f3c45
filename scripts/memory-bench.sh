#!/usr/bin/env bash
# Long-range recall benchmark: the recurrent-memory model against truncation to the window (keep
# the start; keep the end) and chunk-and-average — the same pretrained model, window, data,
# epochs, lr and batch for all. Documents 4× and 8× the window; a dialogue variant at 4×.
# Data comes from `engram recall-data` (deterministic, generated here). Prints one table.
#
# Curriculum (as in the RMT paper): every model is trained in stages on documents 1×, 2×, 4×, 8×
# the window, each stage starting from the previous stage's output, so all models get the same
# data and steps; each stage is evaluated on its own test set and the table reports the stages
# named by --factors. Trained directly on 8× (190 steps) the memory model stays at chance.
# The first stage must be solvable inside one segment, so that the model learns the comparison
# before it has to learn to carry the fact: 1× documents mostly fit one window, but a 1× dialogue
# plus its candidate response never does (turns stay whole), and trained from 1× the dialogue
# model stays at chance (50.4 % after 3 epochs of 4,000). So dialogues start with a stage "h" of
# half-window dialogues (--dialogue-curriculum).
#
#   scripts/memory-bench.sh --engram target/release/engram --model weights/cache/all-MiniLM-L6-v2 --device cuda
#
# Options (defaults): --window 64  --memory-tokens 4  --factors "4 8"  --dialogue-factor 4
#   --train 2000 --eval 500 --epochs 2 (per stage) --final-epochs (the last stage's; default --epochs)
#   --lr 1e-4 --batch 32 --seed 1 --curriculum "1 2 4 8" --dialogue-curriculum "h 1 2 4"
#   --out /tmp/engram-memory-bench
#   --only "memory chunk head tail" (which models to run)
set -euo pipefail
engram=target/release/engram model=weights/cache/all-MiniLM-L6-v2 device=cpu
window=64 m=4 factors="4 8" dfactor=4 train=2000 eval=500 epochs=2 final_epochs= lr=1e-4 batch=32 seed=1 curriculum="1 2 4 8" dcurriculum="h 1 2 4"
out=/tmp/engram-memory-bench only="memory chunk head tail"
while [ $# -gt 0 ]; do
  case "$1" in
    --engram) engram=$2 ;; --model) model=$2 ;; --device) device=$2 ;; --window) window=$2 ;;
    --memory-tokens) m=$2 ;; --factors) factors=$2 ;; --dialogue-factor) dfactor=$2 ;; --train) train=$2 ;;
    --eval) eval=$2 ;; --epochs) epochs=$2 ;; --lr) lr=$2 ;; --batch) batch=$2 ;; --seed) seed=$2 ;;
    --out) out=$2 ;; --only) only=$2 ;; --curriculum) curriculum=$2 ;; --final-epochs) final_epochs=$2 ;;
    --dialogue-curriculum) dcurriculum=$2 ;;
    *) echo "memory-bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p "$out"
rows=()

# run NAME TASK DATA FROM EPOCHS EXTRA...: fine-tune FROM, print and record "name test-accuracy seconds".
run() {
  local name=$1 task=$2 data=$3 from=$4 ep=$5; shift 5
  local dir="$out/run-$name" t0 t1 acc
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  t0=$(date +%s.%N)
  "$engram" finetune --model "$from" --task "$task" --train "$data/train.jsonl" --dev "$data/dev.jsonl" --test "$data/test.jsonl" \
    --out "$dir" --epochs "$ep" --lr "$lr" --batch-size "$batch" --warmup-ratio 0.1 --seed "$seed" --device "$device" --quiet "$@" \
    > "$dir.log" 2>&1 || { echo "memory-bench: $name failed:"; tail -n 5 "$dir.log"; rows+=("$name FAILED -"); return 0; }
  t1=$(date +%s.%N)
  acc=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.1f" % (100*[e for e in m["epochs"] if "test" in e][-1]["test"]["values"]["accuracy"]))' "$dir/metrics.json")
  local dev; dev=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(" ".join("%.1f" % (100*e["accuracy"]) for e in m["epochs"] if "accuracy" in e))' "$dir/metrics.json")
  echo "$name: test accuracy $acc % (dev per epoch: $dev) in $(python3 -c "print('%.0f' % ($t1 - $t0))") s"
  rows+=("$name $acc $(python3 -c "print('%.0f' % ($t1 - $t0))")")
}

want() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# A curriculum factor's length in words: "h" is half a window, N is N windows.
words_of() { if [ "$1" = h ]; then echo $((window / 2)); else echo $(($1 * window)); fi; }
factor_num() { if [ "$1" = h ]; then echo 0; else echo "$1"; fi; }
# stages KIND TASK MAX NAME EXTRA...: train NAME through the curriculum up to MAX× on KIND data.
stages() {
  local kind=$1 task=$2 max=$3 name=$4; shift 4
  local from=$model f ep cur=$curriculum
  [ "$kind" = dialogue ] && cur=$dcurriculum
  for f in $cur; do
    [ "$(factor_num "$f")" -le "$max" ] || break
    ep=$epochs; [ "$f" = "$max" ] && ep=${final_epochs:-$epochs}
    run "$kind-${f}x/$name" "$task" "$out/$kind-x$f" "$from" "$ep" "$@"
    from="$out/run-$kind-${f}x/$name"
    [ -f "$from/config.json" ] || return 0
  done
}
models() {  # models KIND TASK MAX
  local kind=$1 task=$2 max=$3
  want memory && stages "$kind" "$task" "$max" memory --memory-tokens "$m" --segment-len $((window - m - 2))
  want head && stages "$kind" "$task" "$max" truncate-keep-start --max-length "$window"
  want tail && stages "$kind" "$task" "$max" truncate-keep-end --max-length "$window" --truncate-left
  want chunk && stages "$kind" "$task" "$max" chunk-average --memory-tokens 0 --segment-len $((window - 2))
  return 0
}

echo "== engram long-range recall: $model on $device, window $window, m = $m, $train train / $eval dev / $eval test, $epochs epochs per stage (last: ${final_epochs:-$epochs}), lr $lr, batch $batch"
max=0; for f in $factors; do [ "$f" -gt "$max" ] && max=$f; done
for f in $curriculum; do
  "$engram" recall-data --out "$out/docs-x$f" --words "$(words_of "$f")" --train "$train" --dev "$eval" --test "$eval" --seed "$seed" 2>/dev/null
done
for f in $dcurriculum; do
  "$engram" recall-data --dialogue --out "$out/dialogue-x$f" --words "$(words_of "$f")" --train "$train" --dev "$eval" --test "$eval" --seed "$seed" 2>/dev/null
done
[ "$max" != 0 ] && models docs classify "$max"
[ "$dfactor" != 0 ] && models dialogue pair "$dfactor"
echo
echo "| task/model | test accuracy % | wall s (stage) |"
echo "|---|---|---|"
for r in "${rows[@]}"; do
  set -- $r
  f=${1%%x/*}; f=${f##*-}
  case " $factors $dfactor " in *" $f "*) echo "| $1 | $2 | $3 |" ;; esac
done

#!/usr/bin/env bash
# engram vs PyTorch on this machine's CPU: the real all-MiniLM-L6-v2 at sequence length 128 —
# inference at batch 1 and 32, one fine-tuning step at batch 32 (benches/bert_cpu.rs and its peer
# scripts/bench_cpu_torch.py). The two engines alternate for --rounds rounds (default 2) and each
# keeps its best round, so a neighbour's load on a shared machine does not decide the ratio.
# Installs the model and the reference environment on first use. Prints one table with the ratio
# engram / PyTorch (below 1: engram is faster).
#
#   scripts/cpu-vs-torch.sh [--rounds N] [--reps N]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=2
if [ "${1:-}" = --rounds ]; then rounds=$2; shift 2; fi
model=$(./scripts/install-weights.sh)
./scripts/reference-env.sh >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo bench --locked -q --bench bert_cpu --no-run 2>/dev/null
for r in $(seq "$rounds"); do
  cargo bench --locked -q --bench bert_cpu -- --json "$out/engram-$r.json" "$@"
  .venv-ref/bin/python scripts/bench_cpu_torch.py --model "$model" --json "$out/torch-$r.json" "$@" 2>/dev/null
done
python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
best = lambda who: {k: min(json.load(open(f"{out}/{who}-{r}.json"))[k] for r in range(1, rounds + 1)) for k in json.load(open(f"{out}/{who}-1.json"))}
e, t = best("engram"), best("torch")
print(f"\n| all-MiniLM-L6-v2, seq 128, CPU (best of {rounds} alternating rounds) | engram ms | PyTorch ms | engram / PyTorch |")
print("|---|---|---|---|")
for k in e:
    if k in t:  # rows PyTorch has no peer for (the checkpointed step) are engram's own table's
        print(f"| {k} | {e[k]:.1f} | {t[k]:.1f} | {e[k] / t[k]:.2f} |")
PY

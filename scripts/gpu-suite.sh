#!/usr/bin/env bash
# The whole GPU suite in one go: tests/cuda.rs (every op CUDA vs CPU, the toy encoder, BERTs vs
# PyTorch, finetune on the GPU vs the CPU) with the production kernels and with the other sets,
# compute-sanitizer memcheck over it, and the GPU benchmark table (last). The CPU suites are CI's.
#
#   ./scripts/gpu-suite.sh build   # here (no GPU needed): pinned nvcc, build, stage into .gpu-carry/
#   ./scripts/gpu-suite.sh run     # on the GPU machine, from the repository root with .gpu-carry/
#   ./scripts/gpu-suite.sh         # both, when this machine has the GPU
#   ./scripts/gpu-suite.sh stash   # on the GPU machine: keep carried weight parts in /tmp
#   ./scripts/gpu-suite.sh memory  # on the GPU machine: the long-range recall benchmark
#
# Dry run of the whole suite here, on the emulated device (no GPU):
#   ENGRAM_SUITE_FEATURES=cuda-emu ./scripts/gpu-suite.sh build && ENGRAM_BENCH_QUICK=1 ./scripts/gpu-suite.sh run
# (then rebuild without ENGRAM_SUITE_FEATURES before carrying to a GPU: emulated binaries
# cannot run there).
#
# all-MiniLM-L6-v2 (87 MiB) is larger than one transfer to the GPU machine may be, so `build` also
# splits it into .gpu-weights/{a,b,c}; carry a and b with `stash` calls and c with `run`, and `run`
# reassembles (and checks) it before the tests. Without the parts the MiniLM GPU test says SKIPPED.
#
# The GPU machine needs only an NVIDIA driver (CUDA 13.0+); compute-sanitizer is used when found.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.gpu-carry

build() {
  ./scripts/install-nvcc.sh >/dev/null
  rm -rf "$stage"; mkdir -p "$stage/bin"
  # No debug info: the staged binaries must stay small enough to carry.
  export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_BENCH_DEBUG=0
  # Plain (uncompressed) fatbins in everything the suite runs: gzip shrinks them for the carry
  # nearly as well, and no driver can refuse them. The default build's compressed ones are
  # probed by one binary of their own (engram-compressed, `run`'s first line).
  export ENGRAM_FATBIN_COMPRESS=0
  # ENGRAM_SUITE_FEATURES=cuda-emu stages binaries for the emulated device instead: a dry run
  # of `run` on this machine (with ENGRAM_BENCH_QUICK=1 for the benchmark).
  local feats=${ENGRAM_SUITE_FEATURES:-cuda,cublas-reference}
  cargo build --release --locked --features "$feats" --tests --benches --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        k = m["target"]["kind"][0]
        print(m["executable"], m["target"]["name"], k)
' | while read -r exe name kind; do
      # Carried: the GPU tests (tests/cuda.rs) and the GPU benchmark. The CPU suites are CI's
      # (every binary embeds every kernel module: carrying them all, 68 MiB with the MiniLM part,
      # passed the 64 MiB limit once the tensor-core GEMMs came in).
      case "$kind-$name" in test-cuda | bench-gpu) ;; *) continue ;; esac
      cp "$exe" "$stage/bin/$kind-$name"
    done
  rm -rf .gpu-weights
  local w; w=$(./scripts/install-weights.sh)
  mkdir -p .gpu-weights/a .gpu-weights/b .gpu-weights/c
  split -n 3 -d "$w/model.safetensors" .gpu-weights/part-
  for i in 0 1 2; do mv ".gpu-weights/part-0$i" ".gpu-weights/$(echo abc | cut -c$((i + 1)))/model.safetensors.part$i"; done
  (cd "$w" && cp -r config.json tokenizer.json modules.json 1_Pooling sentence_bert_config.json "$OLDPWD/.gpu-weights/c/")
  sha256sum "$w/model.safetensors" | cut -d' ' -f1 > .gpu-weights/c/model.sha256
  echo "$feats" > "$stage/features"
  git rev-parse --short HEAD > "$stage/commit"
  git status --porcelain --untracked-files=no | grep -q . && echo "+dirty" >> "$stage/commit" || true
  cargo build --release --locked --features "$feats" --bin engram 2>/dev/null
  cp target/release/engram "$stage/bin/engram"
  if ! grep -q cuda-emu <<<"$feats"; then
    ENGRAM_FATBIN_COMPRESS=1 CARGO_TARGET_DIR=target/compressed cargo build --release --locked --features "$feats" --bin engram 2>/dev/null
    cp target/compressed/release/engram "$stage/bin/engram-compressed"
  fi
  strip "$stage"/bin/* 2>/dev/null || true
  gzip -9 "$stage"/bin/*   # a third of the size to carry
  du -sh "$stage" | sed 's/^/staged: /'
  ls "$stage/bin"
}

minilm=/tmp/engram-minilm
stash() {
  mkdir -p "$minilm"
  for d in .gpu-weights/*/; do [ -d "$d" ] && cp -r "$d"* "$minilm/"; done
  ls "$minilm"
}

assemble() {
  stash >/dev/null
  if [ ! -f "$minilm/model.safetensors" ] && ls "$minilm"/model.safetensors.part0 "$minilm"/model.safetensors.part1 "$minilm"/model.safetensors.part2 >/dev/null 2>&1; then
    cat "$minilm"/model.safetensors.part0 "$minilm"/model.safetensors.part1 "$minilm"/model.safetensors.part2 > "$minilm/model.safetensors"
    if [ "$(sha256sum "$minilm/model.safetensors" | cut -d' ' -f1)" != "$(cat "$minilm/model.sha256")" ]; then
      echo "gpu-suite: reassembled MiniLM does not match its checksum" >&2; rm -f "$minilm/model.safetensors"
    fi
  fi
  [ -f "$minilm/model.safetensors" ] && export ENGRAM_MINILM_DIR=$minilm || true
}

run() {
  assemble
  [ -d "$stage/bin" ] || { echo "gpu-suite: no $stage/bin; run '$0 build' first" >&2; exit 1; }
  local bins=/tmp/engram-bin
  rm -rf "$bins"; mkdir -p "$bins"
  for f in "$stage"/bin/*.gz; do gunzip -c "$f" > "$bins/$(basename "$f" .gz)"; chmod +x "$bins/$(basename "$f" .gz)"; done
  local log=${OUT:-/tmp}/gpu-suite.log summary=()
  : > "$log"
  echo "== engram GPU suite: commit $(tr '\n' ' ' < "$stage/commit")" | tee -a "$log"
  if grep -q cuda-emu "$stage/features" 2>/dev/null; then
    echo "== binaries built for the EMULATED device (a dry run; rebuild without ENGRAM_SUITE_FEATURES for a GPU)" | tee -a "$log"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/== GPU: /' | tee -a "$log" || true
  date -u +"== date: %Y-%m-%d %H:%M UTC" | tee -a "$log"
  local fail=0
  # The default build embeds compressed fatbins (the driver inflates them); the suite's binaries
  # embed plain ones. One self-check through the compressed ones says whether this driver loads them.
  if [ -x "$bins/engram-compressed" ]; then
    if "$bins/engram-compressed" selfcheck --device cuda >>"$log" 2>&1; then
      summary+=("compressed fatbins (the default build): selfcheck --device cuda ok")
    else
      summary+=("compressed fatbins (the default build): selfcheck --device cuda FAILED (see the log; the suite below runs plain fatbins)"); fail=1
    fi
  fi
  for t in "$bins"/test-*; do
    [ -e "$t" ] || continue
    local name=${t##*/test-}
    local one=${OUT:-/tmp}/one.log
    if "$t" --test-threads=1 --nocapture >"$one" 2>&1; then ok=ok; else ok=FAILED; fail=1; fi
    cat "$one" >> "$log"
    summary+=("test $name: $ok — $(grep -h 'test result' "$one" | tail -n1 | sed 's/^test result: //; s/; finished.*//' || true)$(grep -q SKIPPED "$one" && echo ' (some SKIPPED)' || true)")
    rm -f "$one"
  done
  # The other kernel sets through the whole CUDA suite (BERT, toy training, finetune): the first
  # ones (gemm_v1, attention v1), then the 3xTF32 tensor-core gemm_v3 (f32-accurate, so the same
  # tolerances). The default run above is the production gemm_v2 + attention v2.
  if [ -x "$bins/test-cuda" ]; then
    local one=${OUT:-/tmp}/one.log
    for trial in "ENGRAM_GEMM=v1 ENGRAM_ATTENTION=v1" "ENGRAM_GEMM=v3"; do
      if env $trial "$bins/test-cuda" --test-threads=1 --nocapture >"$one" 2>&1; then ok=ok; else ok=FAILED; fail=1; fi
      cat "$one" >> "$log"
      summary+=("test cuda with $trial: $ok — $(grep -h 'test result' "$one" | tail -n1 | sed 's/^test result: //; s/; finished.*//' || true)")
      rm -f "$one"
    done
  fi
  if [ -x "$bins/test-cuda" ]; then
    local cs
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1 || true)
    if [ -n "$cs" ]; then
      if "$cs" --tool memcheck --leak-check no --error-exitcode 1 "$bins/test-cuda" --test-threads=1 >>"$log" 2>&1; then
        summary+=("memcheck over test-cuda: $(grep -o 'ERROR SUMMARY: [0-9]* errors' "$log" | tail -n1)")
      else
        summary+=("memcheck over test-cuda: FAILED ($(grep -o 'ERROR SUMMARY: [0-9]* errors' "$log" | tail -n1))"); fail=1
      fi
    else
      summary+=("memcheck: compute-sanitizer not found on this machine")
    fi
  fi
  local bench_out=""
  if [ -x "$bins/bench-gpu" ]; then
    bench_out=$("$bins/bench-gpu" 2>&1) || { fail=1; bench_out+=$'\nbench FAILED'; }
    grep -q DISAGREES <<<"$bench_out" && fail=1
    echo "$bench_out" >> "$log"
  fi
  grep -E "SKIPPED|panicked|FAILED|DISAGREES|max \|engram|cosine" "$log" | sort -u | head -n 30 || true
  echo; printf '%s\n' "${summary[@]}"
  echo "$bench_out"
  exit $fail
}

# engram vs PyTorch + transformers fine-tuning on the GPU (PyTorch is on that machine); needs the
# MiniLM parts and data/cache (./scripts/install-data.sh) carried. Extra arguments go to the script.
compare() {
  assemble
  [ -n "${ENGRAM_MINILM_DIR:-}" ] || { echo "gpu-suite: MiniLM not assembled (stash the parts first)" >&2; exit 1; }
  mkdir -p /tmp/engram-bin
  gunzip -c "$stage/bin/engram.gz" > /tmp/engram-bin/engram && chmod +x /tmp/engram-bin/engram
  PYTHONUNBUFFERED=1 python3 scripts/compare_torch.py --model "$ENGRAM_MINILM_DIR" --engram /tmp/engram-bin/engram --device cuda \
    --json "${OUT:-/tmp}/compare.json" "$@" 2>&1 | grep -vE "Warning|warn\(|MISSING|UNEXPECTED|^Notes|^- |^Key|^-+\+|^$|BertFor|Consider"
}

# The long-range recall benchmark (scripts/memory-bench.sh) on the GPU with MiniLM; needs the
# MiniLM parts. Extra arguments go to the script.
memory() {
  assemble
  [ -n "${ENGRAM_MINILM_DIR:-}" ] || { echo "gpu-suite: MiniLM not assembled (stash the parts first)" >&2; exit 1; }
  mkdir -p /tmp/engram-bin
  gunzip -c "$stage/bin/engram.gz" > /tmp/engram-bin/engram && chmod +x /tmp/engram-bin/engram
  ./scripts/memory-bench.sh --engram /tmp/engram-bin/engram --model "$ENGRAM_MINILM_DIR" --device cuda --out /tmp/engram-memory-bench "$@" 2>&1 | tee "${OUT:-/tmp}/memory-bench.log"
}

case "${1:-all}" in
  build) build ;;
  run) run ;;
  stash) stash ;;
  compare) shift; compare "$@" ;;
  memory) shift; memory "$@" ;;
  all) build; run ;;
  *) echo "usage: $0 [build|run]" >&2; exit 2 ;;
esac

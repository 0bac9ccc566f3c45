#!/usr/bin/env bash
# Mutation check of the CUDA host code against the emulated device: each mutant below breaks the
# Rust side of one CUDA launch (an argument, a buffer size, a seed, a dimension) and the CUDA
# suite on the emulated device (`--features cuda-emu`, tests/cuda.rs) must then fail. Not part of
# the test command (one rebuild per mutant, about a minute each on two cores).
#
#   ./scripts/host-mutants.sh      # on a clean working tree; restores every file it mutates
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "host-mutants: the working tree has changes; commit or stash them first" >&2
  exit 2
fi
backup=$(mktemp)
current=""
restore() { [ -n "$current" ] && cp "$backup" "$current"; current=""; }
trap restore EXIT INT TERM
survived=0

# mutant NAME FILE FROM TO [ENV...]: FROM must occur exactly once in FILE.
mutant() {
  local name=$1 file=$2 from=$3 to=$4
  shift 4
  cp "$file" "$backup"
  current=$file
  python3 - "$file" "$from" "$to" <<'P'
import sys
path, a, b = sys.argv[1:]
s = open(path).read()
if s.count(a) != 1:
    sys.exit(f"host-mutants: {a!r} occurs {s.count(a)} times in {path}, expected once")
open(path, "w").write(s.replace(a, b))
P
  local log=/tmp/engram-mutant-$name.log
  if ! cargo build --release --features cuda-emu --tests >"$log" 2>&1; then
    echo "$name: does not compile (fix the mutant)"; survived=1
  elif env "$@" cargo test --release --features cuda-emu --test cuda >>"$log" 2>&1; then
    echo "$name: SURVIVED (the suite passed; log $log)"; survived=1
  else
    echo "$name: killed — $(grep -m1 -oE 'engram CUDA emulator: kernel [^—]*|panicked at [^ ]*' "$log" || echo 'failed')"
  fi
  restore
}

mutant adamw-step-size src/optim/adamw.rs '&epsf, &ss, &bc2, &n)' '&epsf, &bc2, &ss, &n)' X=1
mutant attention-v2-lse-short src/ops/attention.rs 'let mut lse = dev.alloc::<f32>(b * nh * tq)?;' \
  'let mut lse = dev.alloc::<f32>(b * nh * tq - 1)?;' ENGRAM_ATTENTION=v2
mutant gemm-stride-b src/device/cuda.rs '&sa, &sb, &sc, &acci)' '&sa, &sa, &sc, &acci)' X=1
mutant ce-rows-one-short src/ops/cross_entropy.rs 'let (r, vi) = (rows as i64, v as i32);' \
  'let (r, vi) = (rows as i64 - 1, v as i32);' X=1
mutant layer-norm-dw-db-swapped src/ops/layer_norm.rs 'cfg_1d(self.c); &mut dw, &mut db' 'cfg_1d(self.c); &mut db, &mut dw' X=1
mutant dropout-fwd-seed src/ops/dropout.rs 'let mut y = dev.alloc::<f32>(x.numel())?;' \
  'let mut y = dev.alloc::<f32>(x.numel())?; let seed = seed ^ 1;' X=1
mutant clip-half-norm src/optim/mod.rs 'sum_squares(v, v.len())' 'sum_squares(v, v.len() / 2)' X=1
mutant embedding-bwd-no-padding src/ops/embedding.rs 'dt, dy, idd, &n, &ci, &pad, &has_pad)' 'dt, dy, idd, &n, &ci, &pad, &0i32)' X=1
mutant pool-bwd-dims-swapped src/ops/pooling.rs 'dx, dy, m, &d[0], &d[1], &d[2])' 'dx, dy, m, &d[0], &d[2], &d[1])' X=1
exit $survived

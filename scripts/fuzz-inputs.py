#!/usr/bin/env python3
"""Input fuzzing of the engram binary: corrupted copies of a model directory (safetensors header
bytes, truncation, header length; config.json values, deletions and types; tokenizer.json
truncation and vocabulary ids; the slow tokenizer's vocab.txt / vocab.json + merges.txt in its
place, corrupted) through `embed`, `predict` and `predict --int8`, and corrupted training files (CSV, CoNLL, and
multi-label JSONL and regression CSV: flipped and inserted bytes, truncation, duplicated or
deleted lines) through `finetune`, and a finished run's checkpoint with one file corrupted (trainer state, arguments,
optimizer moments, weights, config) through `finetune --resume`, plus corrupted JSONL inputs to
`predict`. A run passes when every call exits 0 (accepted) or 1/2 (a reported error) — a panic
(101) or a signal is a bug — and a failed resume leaves the saved best model as it was. Not part of the test command; the standard library only.

    cargo build --release && python3 scripts/fuzz-inputs.py [--bin target/release/engram] [--seed 1] [--n 300] [--model weights/tiny-distilbert]
"""
import argparse, json, os, random, shutil, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, args):
    try:
        p = subprocess.run([binary] + args, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stderr[-600:]
    except subprocess.TimeoutExpired:
        return "timeout", ""


def model_mutants(binary, rng, n, tmp, model="weights/tiny-bert"):
    src = os.path.join(ROOT, model)
    cfg0 = json.load(open(f"{src}/config.json"))
    bad = 0
    for i in range(n):
        d = os.path.join(tmp, f"m{i}-{os.path.basename(model)}")
        shutil.copytree(src, d)
        kind = rng.choice(["st_header", "st_trunc", "st_len", "cfg_val", "cfg_del", "tok_trunc", "tok_flip", "cfg_type", "slow_vocab"])
        st = f"{d}/model.safetensors"
        b = bytearray(open(st, "rb").read())
        hl = int.from_bytes(b[:8], "little")
        if kind == "st_header":
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8, 8 + hl)] = rng.randrange(256)
            open(st, "wb").write(b)
        elif kind == "st_trunc":
            open(st, "wb").write(b[: rng.randrange(len(b))])
        elif kind == "st_len":
            v = rng.choice([0, 1, hl - 1, hl + 1, 2**40, 2**64 - 1, rng.randrange(2**32)])
            b[:8] = v.to_bytes(8, "little")
            open(st, "wb").write(b)
        elif kind in ("cfg_val", "cfg_del", "cfg_type"):
            cfg = dict(cfg0)
            k = rng.choice(list(cfg.keys()))
            if kind == "cfg_del":
                del cfg[k]
            elif kind == "cfg_val":
                cfg[k] = rng.choice([0, -1, 1, 2**31, 2**63 - 1, 1e30, 0.5, 3, 7, 10**6])
            else:
                cfg[k] = rng.choice(["x", None, [], {}, True])
            json.dump(cfg, open(f"{d}/config.json", "w"))
        elif kind == "slow_vocab":
            # Only the slow tokenizer's files, from tokenizer.json, then damaged.
            t = json.load(open(f"{d}/tokenizer.json"))
            os.remove(f"{d}/tokenizer.json")
            vocab = t["model"]["vocab"]
            if t["model"]["type"] == "WordPiece":
                lines = [k for k, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
                how = rng.choice(["drop", "dupe", "garbage", "empty", "trunc"])
                if how == "drop":
                    del lines[rng.randrange(len(lines))]
                elif how == "dupe":
                    lines.insert(rng.randrange(len(lines)), rng.choice(lines))
                elif how == "garbage":
                    lines[rng.randrange(len(lines))] = "\udcff" if rng.random() < 0.5 else ""
                elif how == "empty":
                    lines = []
                else:
                    lines = lines[: rng.randrange(len(lines))]
                open(f"{d}/vocab.txt", "w", errors="surrogateescape").write("\n".join(lines) + "\n")
                if rng.random() < 0.3:
                    open(f"{d}/tokenizer_config.json", "w").write(rng.choice(['{"do_lower_case": "yes"}', '{"cls_token": 5}', "{", '{"unk_token": "[NOPE]"}']))
            elif t["model"]["type"] == "BPE":
                merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
                how = rng.choice(["merge_unknown", "merge_bad", "vocab_bad", "no_merges"])
                if how == "merge_unknown":
                    merges[rng.randrange(len(merges))] = "zzz qqq"
                elif how == "merge_bad":
                    merges[rng.randrange(len(merges))] = rng.choice(["single", "", "a b c"])
                elif how == "vocab_bad":
                    vocab[rng.choice(list(vocab))] = rng.choice([-1, "x", 10**12])
                json.dump(vocab, open(f"{d}/vocab.json", "w"))
                if how != "no_merges":
                    open(f"{d}/merges.txt", "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
        elif kind == "tok_trunc":
            t = open(f"{d}/tokenizer.json").read()
            open(f"{d}/tokenizer.json", "w").write(t[: rng.randrange(len(t))])
        else:
            t = json.load(open(f"{d}/tokenizer.json"))
            vocab = t["model"]["vocab"]
            if isinstance(vocab, dict):  # WordPiece / BPE: token -> id
                vocab[rng.choice(list(vocab.keys()))] = rng.choice([-1, 10**9, 135, 134, "x"])
            else:  # Unigram: [piece, score] pairs
                vocab[rng.randrange(len(vocab))] = rng.choice([["x", "bad"], [None, 0.0], "x", ["tok", 1e300], []])
            json.dump(t, open(f"{d}/tokenizer.json", "w"))
        calls = (["embed", "--model", d, "hello world the cat"], ["predict", "--model", d, "hello world"], ["predict", "--int8", "--model", d, "hello world"])
        for args in calls:
            rc, err = run(binary, args)
            if rc not in (0, 1, 2):
                bad += 1
                print(f"BAD model mutant {i} ({kind}), {args[0]}: exit {rc}\n{err}", flush=True)
                break
        shutil.rmtree(d, ignore_errors=True)
    return bad


def data_mutants(binary, rng, n, tmp):
    # The multilabel (JSONL) and regression (CSV) files: the classification fixtures relabelled.
    fx = os.path.join(tmp, "fixtures")
    shutil.copytree(os.path.join(ROOT, "tests/fixtures/data"), fx)
    for split in ("train", "dev"):
        rows = [l.rsplit(",", 1) for l in open(f"{fx}/tiny_{split}.csv").read().splitlines()[1:]]
        with open(f"{fx}/tiny_{split}_multi.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t, "labels": [l] + (["long"] if len(t) > 25 else [])}) + "\n" for t, l in rows)
        with open(f"{fx}/tiny_{split}_score.csv", "w") as f:
            f.write("text,label\n" + "".join(f"{t},{1.0 if l == 'pos' else -0.5}\n" for t, l in rows))
    bad = 0
    for i in range(n):
        task, tr, dv = rng.choice([("classify", "tiny_train.csv", "tiny_dev.csv"), ("ner", "tiny_train.conll", "tiny_dev.conll"),
                                   ("multilabel", "tiny_train_multi.jsonl", "tiny_dev_multi.jsonl"), ("regression", "tiny_train_score.csv", "tiny_dev_score.csv")])
        d = os.path.join(tmp, f"d{i}")
        os.makedirs(d)
        data = bytearray(open(f"{fx}/{tr}", "rb").read())
        kind = rng.choice(["flip", "trunc", "insert", "dupe_line", "delete_line", "bytes"])
        if kind == "flip":
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.choice(b',\t\n"\r x\xff\x00')
        elif kind == "trunc":
            data = data[: rng.randrange(len(data))]
        elif kind == "insert":
            j = rng.randrange(len(data))
            data[j:j] = rng.choice([b'"', b"\n\n\n", b",,,", b"\t", b"\xef\xbb\xbf", b"\x00", b"-100", b"O O O"])
        elif kind == "bytes":
            j = rng.randrange(len(data))
            data[j:j] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        else:
            lines = data.split(b"\n")
            j = rng.randrange(len(lines))
            if kind == "dupe_line":
                lines.insert(j, lines[j])
            else:
                del lines[j]
            data = bytearray(b"\n".join(lines))
        ext = tr.split(".")[-1]
        open(f"{d}/train.{ext}", "wb").write(data)
        args = ["finetune", "--model", os.path.join(ROOT, "weights/tiny-bert"), "--task", task, "--train", f"{d}/train.{ext}",
                "--dev", f"{fx}/{dv}", "--out", f"{d}/out", "--epochs", "1", "--batch-size", "8", "--max-length", "16"]
        rc, err = run(binary, args)
        if rc not in (0, 1, 2):
            bad += 1
            print(f"BAD data mutant {i} ({kind}, {task}): exit {rc}\n{err}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return bad


def mutate_json(rng, value):
    """One random edit somewhere in a JSON value: a changed, deleted or retyped field."""
    if isinstance(value, dict) and value:
        k = rng.choice(list(value.keys()))
        r = rng.random()
        if r < 0.25:
            del value[k]
        elif r < 0.5 or not isinstance(value[k], (dict, list)):
            value[k] = rng.choice([0, -1, 1, 2**31, 2**63 - 1, 1e30, 0.5, "x", None, [], {}, True, [1, 2]])
        else:
            mutate_json(rng, value[k])
    elif isinstance(value, list) and value:
        j = rng.randrange(len(value))
        r = rng.random()
        if r < 0.3:
            del value[j]
        elif r < 0.5:
            value.append(value[j])
        elif isinstance(value[j], (dict, list)):
            mutate_json(rng, value[j])
        else:
            value[j] = rng.choice([0, -1, 2**40, "x", None, 1e30])


def checkpoint_mutants(binary, rng, n, tmp):
    """A finished run's checkpoint with one file corrupted, then `finetune --resume` for one more
    epoch, and `predict` on the saved model with a corrupted input file."""
    fx = os.path.join(ROOT, "tests/fixtures/data")
    base = os.path.join(tmp, "run")
    args = ["finetune", "--model", os.path.join(ROOT, "weights/tiny-bert"), "--task", "classify", "--train", f"{fx}/tiny_train.csv",
            "--dev", f"{fx}/tiny_dev.csv", "--epochs", "2", "--batch-size", "8", "--max-length", "16"]
    rc, err = run(binary, args + ["--out", base])
    if rc != 0:
        raise SystemExit(f"fuzz-inputs: the base run failed: {err}")
    bad = 0
    for i in range(n):
        d = os.path.join(tmp, f"c{i}")
        shutil.copytree(base, d)
        ck = os.path.join(d, "checkpoint")
        name = rng.choice(["engram_state.json", "trainer_state.json", "training_args.json", "optimizer.safetensors", "model.safetensors", "config.json", "inputs"])
        if name == "inputs":
            lines = [json.dumps({"text": "hello world"}), json.dumps({"text": "the cat", "text_pair": "x"})]
            data = bytearray("\n".join(lines).encode())
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice(b'{}[]",:\n x\xff\x00')
            open(f"{d}/in.jsonl", "wb").write(data)
            cmd = ["predict", "--model", d, "--input", f"{d}/in.jsonl"]
        else:
            path = os.path.join(ck, name)
            if name.endswith(".json"):
                try:
                    value = json.load(open(path))
                    mutate_json(rng, value)
                    open(path, "w").write(json.dumps(value))
                except ValueError:
                    pass
                if rng.random() < 0.2:
                    t = open(path).read()
                    open(path, "w").write(t[: rng.randrange(len(t) + 1)])
            else:
                b = bytearray(open(path, "rb").read())
                if rng.random() < 0.5:
                    b = b[: rng.randrange(len(b))]
                else:
                    hl = int.from_bytes(b[:8], "little")
                    for _ in range(rng.randint(1, 4)):
                        b[rng.randrange(8, 8 + hl)] = rng.randrange(256)
                open(path, "wb").write(b)
            cmd = [a for a in args]
            cmd[cmd.index("--epochs") + 1] = "3"
            cmd += ["--out", d, "--resume"]
        best = open(os.path.join(d, "model.safetensors"), "rb").read()
        rc, err = run(binary, cmd)
        if rc not in (0, 1, 2):
            bad += 1
            print(f"BAD checkpoint mutant {i} ({name}): exit {rc}\n{err}", flush=True)
        elif rc != 0 and open(os.path.join(d, "model.safetensors"), "rb").read() != best:
            bad += 1
            print(f"BAD checkpoint mutant {i} ({name}): the failed run changed the saved best model\n{err}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/engram"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=300, help="model mutants (half as many data mutants)")
    ap.add_argument("--model", default="weights/tiny-bert", help="the model directory to corrupt (e.g. weights/tiny-distilbert)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="engram-fuzz-") as tmp:
        bm = model_mutants(a.bin, rng, a.n, tmp, a.model)
        bd = data_mutants(a.bin, rng, a.n // 2, tmp)
        bc = checkpoint_mutants(a.bin, rng, a.n // 2, tmp)
    print(f"{a.n} model-directory mutants: {bm} bad; {a.n // 2} training-file mutants: {bd} bad; "
          f"{a.n // 2} checkpoint/input mutants: {bc} bad")
    raise SystemExit(1 if bm + bd + bc else 0)


if __name__ == "__main__":
    main()
